package crypt

import (
	"encoding/hex"
	"encoding/json"
)

// MasterKeyFromSecret is masterKeyFrom, for golden vectors.
func MasterKeyFromSecret(secret [MasterKeySize]byte) *MasterKey { return masterKeyFrom(secret) }

// Rechecksum recomputes the checksum of a key file whose fields were
// altered, as someone who can write key files can: the checksum needs no
// key. It checks nothing, and keeps fields it does not know.
func Rechecksum(b []byte) []byte {
	var j keyFileJSON
	if err := json.Unmarshal(b, &j); err != nil {
		panic(err)
	}
	kf := &KeyFile{ID: j.ID, Created: j.Created, Host: j.Host, User: j.User, KDF: j.KDF, data: j.Data}
	copy(kf.salt[:], j.Salt)
	copy(kf.check[:], j.Check)
	sum := kf.checksum()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	m["checksum"] = hex.EncodeToString(sum[:])
	out, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return out
}

// MaxUnlockTries is maxUnlockTries.
const MaxUnlockTries = maxUnlockTries
