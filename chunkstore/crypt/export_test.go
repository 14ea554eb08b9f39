package crypt

// MasterKeyFromSecret is masterKeyFrom, for golden vectors.
func MasterKeyFromSecret(secret [MasterKeySize]byte) *MasterKey { return masterKeyFrom(secret) }
