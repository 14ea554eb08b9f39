package staging

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// ErrHBA is matched by the errors of ReadLocalHBA and LocalHBA.Allows: the
// backup's pg_hba.conf cannot be used, or does not let the role in locally
// without a password.
var ErrHBA = errors.New("staging: the backup's pg_hba.conf does not allow it")

// ErrPeerUser is matched, with ErrHBA, by the error of Allows for a peer
// (ident) line that would let the role in only from an OS user of its
// name.
var ErrPeerUser = errors.New("peer authentication needs an OS user named as the role")

// peerUserError is the message of such an error, which matches
// ErrPeerUser too.
type peerUserError struct{ error }

func (e peerUserError) Unwrap() []error { return []error{e.error, ErrPeerUser} }

// Bounds on what ReadLocalHBA reads of a backup's hostile pg_hba.conf.
const (
	maxHBABytes = 1 << 20 // all files together
	maxHBADepth = 10      // include nesting
)

// LocalHBA is the "local" (Unix socket) lines of a backup's pg_hba.conf, in
// order, includes inside the data directory followed. An instance started
// with it (InstanceOptions.LocalHBA) authenticates socket connections by
// these lines and nothing else; it has no TCP listener.
type LocalHBA struct {
	File  string // the data directory's pg_hba.conf
	Lines []HBALine
}

// HBALine is one "local" line of a pg_hba.conf.
type HBALine struct {
	Where    string // file:line, for messages
	Text     string // the line as written (continuations joined)
	Database []hbaToken
	User     []hbaToken
	Method   string
	Options  []string // name=value
}

type hbaToken struct {
	text   string
	quoted bool
}

// ReadLocalHBA reads the "local" lines of dataDir/pg_hba.conf, a file of
// the backup: hostile. It reads at most maxHBABytes in all, follows
// include, include_if_exists and include_dir only to files inside dataDir
// (relative paths; an absolute one names the backed-up host's file
// system), and refuses @file lists, which it does not follow.
func ReadLocalHBA(dataDir string) (*LocalHBA, error) {
	root, err := os.OpenRoot(dataDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	h := &LocalHBA{File: filepath.Join(dataDir, "pg_hba.conf")}
	budget := maxHBABytes
	if err := h.read(root, "pg_hba.conf", 0, false, &budget); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *LocalHBA) read(root *os.Root, name string, depth int, ifExists bool, budget *int) error {
	if depth > maxHBADepth {
		return fmt.Errorf("%w: includes nested deeper than %d at %s", ErrHBA, maxHBADepth, name)
	}
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) && ifExists {
		return nil
	}
	if errors.Is(err, fs.ErrNotExist) && depth == 0 {
		return fmt.Errorf("%w: the restore point has no pg_hba.conf in its data directory (a packaged server may keep it elsewhere, such as /etc/postgresql, which is not in the backup)", ErrHBA)
	}
	if err != nil {
		return fmt.Errorf("%w: reading %s: %v (only files inside the data directory are followed)", ErrHBA, name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(*budget)+1))
	if err != nil {
		return fmt.Errorf("reading %s of the backup: %w", name, err)
	}
	if len(b) > *budget {
		return fmt.Errorf("%w: pg_hba.conf and its includes are larger than %d bytes", ErrHBA, maxHBABytes)
	}
	*budget -= len(b)
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		text := strings.TrimRight(lines[i], "\r")
		for strings.HasSuffix(text, `\`) && i+1 < len(lines) { // continuation
			i++
			text = strings.TrimSuffix(text, `\`) + " " + strings.TrimRight(lines[i], "\r")
		}
		where := fmt.Sprintf("%s:%d", name, n)
		fields, err := hbaFields(text)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrHBA, where, err)
		}
		if len(fields) == 0 {
			continue
		}
		kw := ""
		if len(fields[0]) == 1 && !fields[0][0].quoted {
			kw = fields[0][0].text
		}
		switch kw {
		case "include", "include_if_exists", "include_dir":
			if len(fields) != 2 || len(fields[1]) != 1 {
				return fmt.Errorf("%w: %s: %s needs one file name", ErrHBA, where, kw)
			}
			target := fields[1][0].text
			if filepath.IsAbs(target) {
				return fmt.Errorf("%w: %s: %s %s: an absolute path names a file of the backed-up host, which pgporter does not follow", ErrHBA, where, kw, target)
			}
			target = path.Join(path.Dir(name), target)
			if kw != "include_dir" {
				if err := h.read(root, target, depth+1, kw == "include_if_exists", budget); err != nil {
					return err
				}
				continue
			}
			ents, err := fs.ReadDir(root.FS(), target)
			if err != nil {
				return fmt.Errorf("%w: %s: include_dir %s: %v (only directories inside the data directory are followed)", ErrHBA, where, target, err)
			}
			for _, e := range ents { // sorted by name, as PostgreSQL reads them
				if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".conf") && !strings.HasPrefix(e.Name(), ".") {
					if err := h.read(root, path.Join(target, e.Name()), depth+1, false, budget); err != nil {
						return err
					}
				}
			}
			continue
		case "local":
		default:
			continue // host lines: the instance listens on no TCP port
		}
		if len(fields) < 4 {
			return fmt.Errorf("%w: %s: a local line needs a database, a user and a method", ErrHBA, where)
		}
		for _, f := range fields[1:3] {
			for _, t := range f {
				if !t.quoted && strings.HasPrefix(t.text, "@") {
					return fmt.Errorf("%w: %s: %s: pgporter does not follow @file lists of pg_hba.conf", ErrHBA, where, t.text)
				}
			}
		}
		l := HBALine{Where: where, Text: text, Database: fields[1], User: fields[2], Method: fields[3][0].text}
		for _, f := range fields[4:] {
			for _, t := range f {
				l.Options = append(l.Options, t.text)
			}
		}
		h.Lines = append(h.Lines, l)
	}
	return nil
}

// hbaFields splits a pg_hba.conf line into whitespace-separated fields,
// each a comma-separated list of tokens, as PostgreSQL's tokenizer does:
// double quotes keep spaces, commas and keywords literal, "#" outside
// quotes starts a comment.
func hbaFields(line string) ([][]hbaToken, error) {
	var fields [][]hbaToken
	var field []hbaToken
	var tok strings.Builder
	inQuote, quoted, have := false, false, false
	endTok := func() {
		if have {
			field = append(field, hbaToken{text: tok.String(), quoted: quoted})
		}
		tok.Reset()
		quoted, have = false, false
	}
	endField := func() {
		endTok()
		if len(field) > 0 {
			fields = append(fields, field)
		}
		field = nil
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '"':
			if i+1 < len(line) && line[i+1] == '"' {
				tok.WriteByte('"')
				i++
				continue
			}
			inQuote = false
		case inQuote:
			tok.WriteByte(c)
		case c == '"':
			inQuote, quoted, have = true, true, true
		case c == '#':
			endField()
			return fields, nil
		case c == ',':
			endTok()
		case c == ' ' || c == '\t' || c == '\r':
			// A comma list goes on after a comma even across blanks.
			if tok.Len() == 0 && !have {
				continue
			}
			j := i
			for j < len(line) && (line[j] == ' ' || line[j] == '\t') {
				j++
			}
			if j < len(line) && line[j] == ',' {
				i = j - 1
				continue
			}
			endField()
		default:
			tok.WriteByte(c)
			have = true
		}
	}
	if inQuote {
		return nil, errors.New("unterminated quoted string")
	}
	endField()
	return fields, nil
}

// Contents is the hba file an instance is started with: the local lines in
// order, nothing else.
func (h *LocalHBA) Contents() string {
	var b strings.Builder
	b.WriteString("# The local lines of the backup's pg_hba.conf, written by pgporter (--auth backup-hba).\n")
	for _, l := range h.Lines {
		fmt.Fprintf(&b, "# %s\n%s\n", l.Where, l.Text)
	}
	return b.String()
}

// Allows reports whether a connection over the socket as role to database
// db, from a process of OS user osUser, gets in without a password: the
// first line that matches is trust, or peer (ident) with osUser named as
// role and no user name map. Otherwise the error, matching ErrHBA, names
// the line that decides, or says that none does.
func (h *LocalHBA) Allows(db, role, osUser string) error {
	for _, l := range h.Lines {
		dm, um := matchHBADatabase(l.Database, db, role), matchHBAUser(l.User, role)
		if dm == hbaNo || um == hbaNo {
			continue
		}
		if dm == hbaMaybe || um == hbaMaybe {
			return fmt.Errorf("%w: whether %s (%q) applies to role %q on database %q depends on role membership or a pattern pgporter does not evaluate; it does not guess", ErrHBA, l.Where, l.Text, role, db)
		}
		switch l.Method {
		case "trust":
			return nil
		case "peer", "ident":
			if slices.ContainsFunc(l.Options, func(o string) bool { return strings.HasPrefix(o, "map=") }) {
				return fmt.Errorf("%w: %s (%q) logs role %q in by peer authentication with a user name map, which --auth backup-hba does not use", ErrHBA, l.Where, l.Text, role)
			}
			if osUser != role {
				return peerUserError{fmt.Errorf("%w: %s (%q) logs role %q in by peer authentication, which takes the OS user that connects, here %q, as the role name; run pgporter as OS user %q, or export as a role the backup trusts locally", ErrHBA, l.Where, l.Text, role, osUser, role)}
			}
			return nil
		case "reject":
			return fmt.Errorf("%w: %s (%q) rejects role %q on database %q", ErrHBA, l.Where, l.Text, role, db)
		default:
			return fmt.Errorf("%w: %s (%q) asks role %q for %s authentication, which needs a password (or other credentials): leave out --auth backup-hba and give the password", ErrHBA, l.Where, l.Text, role, l.Method)
		}
	}
	return fmt.Errorf("%w: no local line of %s matches role %q on database %q", ErrHBA, h.File, role, db)
}

type hbaMatch int

const (
	hbaNo hbaMatch = iota
	hbaYes
	hbaMaybe
)

func matchHBADatabase(toks []hbaToken, db, role string) hbaMatch {
	res := hbaNo
	for _, t := range toks {
		var m hbaMatch
		switch {
		case t.quoted:
			m = yesIf(t.text == db)
		case t.text == "all":
			m = hbaYes
		case t.text == "sameuser":
			m = yesIf(db == role)
		case t.text == "samerole", t.text == "samegroup":
			m = hbaMaybe
		case t.text == "replication":
			m = hbaNo
		default:
			m = matchHBAName(t.text, db)
		}
		res = max(res, m)
		if res == hbaYes {
			return res
		}
	}
	return res
}

func matchHBAUser(toks []hbaToken, role string) hbaMatch {
	res := hbaNo
	for _, t := range toks {
		var m hbaMatch
		switch {
		case t.quoted:
			m = yesIf(t.text == role)
		case t.text == "all":
			m = hbaYes
		case strings.HasPrefix(t.text, "+"):
			// A role is a member of itself; of other roles, the catalog says.
			m = hbaMaybe
			if t.text[1:] == role {
				m = hbaYes
			}
		default:
			m = matchHBAName(t.text, role)
		}
		res = max(res, m)
		if res == hbaYes {
			return res
		}
	}
	return res
}

// matchHBAName matches a plain name, or a regular expression (a token
// starting with "/", PostgreSQL 16), which pgporter does not evaluate:
// POSIX and Go expressions differ.
func matchHBAName(tok, name string) hbaMatch {
	if strings.HasPrefix(tok, "/") {
		return hbaMaybe
	}
	return yesIf(tok == name)
}

func yesIf(b bool) hbaMatch {
	if b {
		return hbaYes
	}
	return hbaNo
}
