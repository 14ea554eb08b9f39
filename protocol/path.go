package protocol

import (
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// Limits on names carried by messages.
const (
	MaxPathLen       = 4096 // bytes in a relative or absolute path
	MaxPathElemLen   = 255  // bytes in one element of a path
	MaxTransferIDLen = 128
)

// ValidPath returns an error matching ErrBadPath unless p is a canonical
// relative slash-separated path, the only form of file name a peer may send:
// non-empty, at most MaxPathLen bytes, valid UTF-8, no NUL, no backslash, no
// leading '/', no empty, "." or ".." element, each element at most
// MaxPathElemLen bytes, and path.Clean(p) == p. Such a path cannot leave the
// directory it is resolved against (symbolic links aside: receivers still
// write through os.Root).
func ValidPath(p string) error {
	if err := checkPathChars(p); err != nil {
		return err
	}
	if p[0] == '/' {
		return badPath(p, "absolute")
	}
	if err := checkElems(p, strings.Split(p, "/")); err != nil {
		return err
	}
	if path.Clean(p) != p {
		return badPath(p, "not canonical")
	}
	return nil
}

// ValidAbsPath returns an error matching ErrBadPath unless p is a canonical
// absolute slash-separated path, the form of OpenTransfer.Dest and
// SpaceQuery.Path: as ValidPath, but starting with '/'. "/" itself is valid.
func ValidAbsPath(p string) error {
	if err := checkPathChars(p); err != nil {
		return err
	}
	if p[0] != '/' {
		return badPath(p, "not absolute")
	}
	if p != "/" {
		if err := checkElems(p, strings.Split(p[1:], "/")); err != nil {
			return err
		}
	}
	if path.Clean(p) != p {
		return badPath(p, "not canonical")
	}
	return nil
}

func checkPathChars(p string) error {
	switch {
	case p == "":
		return badPath(p, "empty")
	case len(p) > MaxPathLen:
		return badPath(p, fmt.Sprintf("longer than %d bytes", MaxPathLen))
	case !utf8.ValidString(p):
		return badPath(p, "not valid UTF-8")
	case strings.IndexByte(p, 0) >= 0:
		return badPath(p, "contains NUL")
	case strings.IndexByte(p, '\\') >= 0:
		return badPath(p, "contains a backslash")
	}
	return nil
}

func checkElems(p string, elems []string) error {
	for _, e := range elems {
		switch {
		case e == "":
			return badPath(p, "empty element")
		case e == "." || e == "..":
			return badPath(p, fmt.Sprintf("element %q", e))
		case len(e) > MaxPathElemLen:
			return badPath(p, fmt.Sprintf("element longer than %d bytes", MaxPathElemLen))
		}
	}
	return nil
}

func badPath(p, why string) error {
	return fmt.Errorf("%w %q: %s", ErrBadPath, truncate(p, 120), why)
}

// ValidTransferID returns an error matching ErrBadPath unless id is 1 to
// MaxTransferIDLen bytes of [A-Za-z0-9._-] and not "." or "..". Receivers
// may use it as a file or directory name.
func ValidTransferID(id string) error {
	if id == "" || len(id) > MaxTransferIDLen {
		return fmt.Errorf("%w: transfer ID must be 1 to %d bytes, got %d", ErrBadPath, MaxTransferIDLen, len(id))
	}
	if id == "." || id == ".." {
		return fmt.Errorf("%w: transfer ID %q", ErrBadPath, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: transfer ID %q: byte %#x not in [A-Za-z0-9._-]", ErrBadPath, truncate(id, 120), c)
		}
	}
	return nil
}
