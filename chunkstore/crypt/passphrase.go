package crypt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// PasswordEnv is the environment variable a repository's passphrase may be
// given in, as restic's RESTIC_PASSWORD.
const PasswordEnv = "PGPORTER_REPO_PASSWORD"

// maxPassphrase bounds a passphrase read from a file: more is not a
// passphrase file but a mistaken path.
const maxPassphrase = 4 << 10

var (
	// ErrNoPassphrase is matched by the error of ResolvePassphrase when
	// neither source gives one.
	ErrNoPassphrase = errors.New("crypt: no passphrase: give --repo-password-file, or set PGPORTER_REPO_PASSWORD_FILE or " + PasswordEnv)
	// ErrEmptyPassphrase is matched by the error for a source that holds an
	// empty passphrase, and by that of a key made with one.
	ErrEmptyPassphrase = errors.New("crypt: the passphrase is empty")
)

// ReadPassphraseFile reads the passphrase in the file at path
// (--repo-password-file): all of it but one final line ending ("\n" or "\r\n"),
// which editors and echo add. Other white space is the passphrase's. A file
// that does not exist gives an error matching fs.ErrNotExist; an empty
// one, ErrEmptyPassphrase.
func ReadPassphraseFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("crypt: password file %s does not exist: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("crypt: reading password file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("crypt: reading password file: %w", err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("crypt: password file %s is a directory", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPassphrase+1))
	if err != nil {
		return nil, fmt.Errorf("crypt: reading password file %s: %w", path, err)
	}
	if len(b) > maxPassphrase {
		return nil, fmt.Errorf("crypt: password file %s is larger than %d bytes: not a passphrase", path, maxPassphrase)
	}
	if s, ok := bytes.CutSuffix(b, []byte("\n")); ok {
		b, _ = bytes.CutSuffix(s, []byte("\r"))
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: password file %s holds none", ErrEmptyPassphrase, path)
	}
	return b, nil
}

// PassphraseFromEnv returns the passphrase in PasswordEnv, and whether it is
// set. Set but empty gives ErrEmptyPassphrase: an unset variable is left
// to other sources, an empty one is a mistake worth saying.
func PassphraseFromEnv() ([]byte, bool, error) {
	s, ok := os.LookupEnv(PasswordEnv)
	if !ok {
		return nil, false, nil
	}
	if s == "" {
		return nil, true, fmt.Errorf("%w: %s is set, to nothing", ErrEmptyPassphrase, PasswordEnv)
	}
	return []byte(s), true, nil
}

// ResolvePassphrase returns the repository's passphrase: from the file at
// path if path is set (--repo-password-file wins, as in restic), else from
// PasswordEnv, else ErrNoPassphrase.
func ResolvePassphrase(path string) ([]byte, error) {
	if path != "" {
		return ReadPassphraseFile(path)
	}
	p, ok, err := PassphraseFromEnv()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNoPassphrase
	}
	return p, nil
}
