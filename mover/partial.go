package mover

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pgporter/pgporter/protocol"
)

// destRecord is the value of d/<dest>: the transfer that owns DEST.partial
// and the identity (device, inode) of the directory this mover created
// there. A DEST.partial that is not that directory is not ours: a link or
// a directory someone else planted is never written into.
//
// DEST.partial is made under the random name Temp and renamed into place
// (makePartial); a Pending record names Temp before the directory exists,
// and vouches for no directory.
//
// Peer (since protocol 12) is the peer that opened the transfer: only it
// may abandon the directory (abandon.go). A record without one, written by
// an older build, is abandoned by nobody.
type destRecord struct {
	Transfer string `json:"transfer"`
	Peer     string `json:"peer,omitempty"`
	Dev      uint64 `json:"dev,omitempty"`
	Ino      uint64 `json:"ino,omitempty"`
	Temp     string `json:"temp,omitempty"`
	Pending  bool   `json:"pending,omitempty"`
}

func decodeDestRecord(v []byte) destRecord {
	var d destRecord
	if json.Unmarshal(v, &d) != nil || d.Transfer == "" {
		// Written by an older version: the transfer ID alone.
		return destRecord{Transfer: string(v)}
	}
	return d
}

// commitRecord is the value of t/<tid>/commit, journaled before DEST.partial
// is renamed to DEST: after a crash between the rename and the done record,
// it is what proves that the tree at DEST is the one this transfer
// committed.
type commitRecord struct {
	Dest         string `json:"dest"`
	Files        uint64 `json:"files"`
	Bytes        uint64 `json:"bytes"`
	ManifestHash Hash   `json:"manifest_blake3"`
	// Aside (FlagOverwrite) is where the DEST this commit replaces is
	// moved, relative to the root, until the commit is done.
	Aside string `json:"aside,omitempty"`
}

func keyCommit(tid string) []byte { return []byte("t/" + tid + "/commit") }

// errNotOurs is matched by the refusals of a DEST.partial or DEST this
// mover did not make.
var errNotOurs = fmt.Errorf("%w: not made by this mover", protocol.ErrConflict)

func fileIdentity(fi fs.FileInfo) (dev, ino, uid uint64, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, 0, false
	}
	return uint64(st.Dev), st.Ino, uint64(st.Uid), true
}

// checkOwnDir reports whether fi (from Lstat) is a real directory owned by
// this process's user and, if rec knows one, the very directory rec names.
func checkOwnDir(fi fs.FileInfo, rec *destRecord) error {
	if fi.Mode()&fs.ModeSymlink != 0 {
		return errors.New("it is a symbolic link")
	}
	if !fi.IsDir() {
		return errors.New("it is not a directory")
	}
	dev, ino, uid, ok := fileIdentity(fi)
	if !ok {
		return errors.New("its owner cannot be read")
	}
	if uid != uint64(os.Geteuid()) {
		return fmt.Errorf("it is owned by uid %d, not by this mover's uid %d", uid, os.Geteuid())
	}
	if rec == nil || rec.Pending {
		return errors.New("this mover has no record of creating it")
	}
	if rec.Ino != 0 && (rec.Dev != dev || rec.Ino != ino) {
		return errors.New("it is not the directory this mover created")
	}
	return nil
}

// openPartial opens DEST.partial (rel inside rt) as a root of its own after
// checking that it is the directory this mover created (rec, nil if there
// is no record), or creates it (makePartial, journaling through journal).
// Every later write of the transfer goes through the returned root: a name
// swapped in afterwards redirects none of them. It returns the record to
// journal for the directory.
func openPartial(rt *os.Root, partial string, rec *destRecord, tid string, journal func(destRecord) error) (*os.Root, destRecord, error) {
	fi, err := rt.Lstat(partial)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if rec != nil && rec.Temp != "" {
			// What a creation interrupted by a crash left: an empty
			// directory (rmdir removes nothing else), or nothing.
			_ = rt.Remove(rec.Temp)
		}
		made, err := makePartial(rt, partial, tid, journal)
		if err != nil {
			return nil, destRecord{}, err
		}
		rec = &made
		if fi, err = rt.Lstat(partial); err != nil {
			return nil, destRecord{}, err
		}
	case err != nil:
		return nil, destRecord{}, err
	}
	if err := checkOwnDir(fi, rec); err != nil {
		return nil, destRecord{}, fmt.Errorf("%w: %s exists but %v; remove it and rerun", errNotOurs, partial, err)
	}
	proot, err := rt.OpenRoot(partial)
	if err != nil {
		return nil, destRecord{}, err
	}
	if err := samePartial(rt, partial, proot); err != nil {
		proot.Close()
		return nil, destRecord{}, err
	}
	dev, ino, _, _ := fileIdentity(fi)
	return proot, destRecord{Transfer: tid, Dev: dev, Ino: ino}, nil
}

// makePartial creates DEST.partial so that a crash at any point leaves no
// DEST.partial or one whose identity is journaled, never one of this
// mover's that its record does not name: the directory is made under a
// random name, which is journaled first (Pending) so that the next attempt
// removes what a crash left there, then its identity is journaled, then it
// is renamed into place.
func makePartial(rt *os.Root, partial, tid string, journal func(destRecord) error) (destRecord, error) {
	if err := rt.MkdirAll(filepath.Dir(partial), 0o700); err != nil {
		return destRecord{}, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand: never fails on Linux
	tmp := partial + "-" + hex.EncodeToString(b[:]) + partialTempSuffix
	if err := journal(destRecord{Transfer: tid, Temp: tmp, Pending: true}); err != nil {
		return destRecord{}, err
	}
	if err := rt.Mkdir(tmp, 0o700); err != nil {
		return destRecord{}, err
	}
	fi, err := rt.Lstat(tmp)
	if err != nil {
		return destRecord{}, err
	}
	dev, ino, _, _ := fileIdentity(fi)
	d := destRecord{Transfer: tid, Dev: dev, Ino: ino, Temp: tmp}
	if err := journal(d); err != nil {
		return destRecord{}, err
	}
	// rename(2) does not follow a link at DEST.partial, fails on a file or
	// a directory that is not empty, and replaces only an empty directory.
	if err := rt.Rename(tmp, partial); err != nil {
		_ = rt.Remove(tmp)
		return destRecord{}, err
	}
	return d, nil
}

// partialTempSuffix ends the temporary name of a DEST.partial being made:
// DEST.partial-<16 hex digits>.new.
const partialTempSuffix = ".new"

// RemovePartialTemps removes, beside partial (a DEST.partial path on this
// host), the empty directories that a mover killed while making it left
// under temporary names; anything else of that shape stays (rmdir removes
// nothing else, and never a link).
func RemovePartialTemps(partial string) {
	dir, base := filepath.Split(partial)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, base+"-") && strings.HasSuffix(n, partialTempSuffix) {
			_ = syscall.Rmdir(filepath.Join(dir, n))
		}
	}
}

// samePartial checks that the name partial in rt is still, as a real
// directory and not a link, the directory proot holds open.
func samePartial(rt *os.Root, partial string, proot *os.Root) error {
	fi, err := rt.Lstat(partial)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errNotOurs, partial, err)
	}
	held, err := proot.Stat(".")
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir() || !os.SameFile(fi, held) {
		return fmt.Errorf("%w: %s was replaced while the transfer wrote it; remove it and rerun", errNotOurs, partial)
	}
	return nil
}

// writeManifestFile writes the manifest into the partial tree under a
// random temporary name (created exclusively, never through a link), syncs
// it and renames it into place.
func writeManifestFile(proot *os.Root, body []byte) error {
	var f *os.File
	var tmp string
	for range 8 {
		var b [12]byte
		_, _ = rand.Read(b[:])
		tmp = ".pgporter-manifest-" + hex.EncodeToString(b[:]) + ".tmp"
		var err error
		f, err = proot.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	if f == nil {
		return errors.New("no free temporary name for the manifest")
	}
	_, err := f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = proot.Rename(tmp, ManifestName)
	}
	if err != nil {
		_ = proot.Remove(tmp)
		return err
	}
	return nil
}

// committedManifestHash returns the BLAKE3 of the manifest of the tree at
// rel in rt, reading it without following any link: DEST must be a real
// directory and its manifest a regular file.
func committedManifestHash(rt *os.Root, rel string) (Hash, error) {
	fi, err := rt.Lstat(rel)
	if err != nil {
		return Hash{}, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir() {
		return Hash{}, errors.New("it is not a real directory")
	}
	tr, err := rt.OpenRoot(rel)
	if err != nil {
		return Hash{}, err
	}
	defer tr.Close()
	if held, err := tr.Stat("."); err != nil || !os.SameFile(fi, held) {
		return Hash{}, errors.New("it was replaced while being checked")
	}
	return rootManifestHash(tr)
}

// rootManifestHash hashes the manifest at the top of root, refusing a link.
func rootManifestHash(root *os.Root) (Hash, error) {
	mfi, err := root.Lstat(ManifestName)
	if err != nil {
		return Hash{}, err
	}
	if !mfi.Mode().IsRegular() {
		return Hash{}, fmt.Errorf("%s is not a regular file", ManifestName)
	}
	f, err := root.OpenFile(ManifestName, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return Hash{}, err
	}
	defer f.Close()
	if ofi, err := f.Stat(); err != nil || !os.SameFile(mfi, ofi) {
		return Hash{}, fmt.Errorf("%s was replaced while being read", ManifestName)
	}
	h, _, err := HashFile(context.Background(), f)
	return h, err
}
