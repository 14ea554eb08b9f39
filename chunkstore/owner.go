package chunkstore

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// owner is the user that owns a repository. When root writes into a
// repository another user owns (an export as root, a repository whose WAL
// archiver runs as postgres), every file and directory it creates is given
// to that user, so that neither side ever locks the other out.
type owner struct {
	uid, gid int
	on       bool // root writing into someone else's repository
}

// ownerOf returns the owner of dir, which exists.
func ownerOf(dir string) (owner, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return owner{}, fmt.Errorf("chunkstore: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return owner{}, nil
	}
	return owner{uid: int(st.Uid), gid: int(st.Gid), on: os.Geteuid() == 0 && st.Uid != 0}, nil
}

func (o owner) file(f *os.File) error {
	if !o.on {
		return nil
	}
	if err := f.Chown(o.uid, o.gid); err != nil {
		return fmt.Errorf("chunkstore: giving %s to the repository's owner: %w", f.Name(), err)
	}
	return nil
}

func (o owner) path(p string) error {
	if !o.on {
		return nil
	}
	if err := os.Lchown(p, o.uid, o.gid); err != nil {
		return fmt.Errorf("chunkstore: giving %s to the repository's owner: %w", p, err)
	}
	return nil
}

// mkdir creates dir (its parent exists) with the owner's ownership, and
// syncs the parent when it did create it.
func (o owner) mkdir(dir, parent string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return o.takeBack(dir)
	}
	if err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	if err := o.path(dir); err != nil {
		return err
	}
	return syncDir(parent)
}

// takeBack gives dir, which exists, to the owner if it is a directory of
// this process's user: one that a process killed between its mkdir and
// the chown left, which would keep the owner out of it for good. Anything
// else (a link, a file, another user's) is left as it is.
func (o owner) takeBack(dir string) error {
	if !o.on {
		return nil
	}
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil // whoever uses it reports what it is
	}
	defer d.Close()
	fi, err := d.Stat()
	if err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != uint32(os.Geteuid()) {
		return nil
	}
	if err := d.Chown(o.uid, o.gid); err != nil {
		return fmt.Errorf("chunkstore: giving %s to the repository's owner: %w", dir, err)
	}
	return nil
}

func randUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return binary.LittleEndian.Uint64(b[:])
}
