package staging

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/jackc/pgservicefile"
)

// ErrNoService is returned by LookupService when PGSERVICE names a service
// that no service file defines.
var ErrNoService = errors.New("staging: connection service not found")

// SystemServiceDir is where libpq looks for the system-wide pg_service.conf
// when PGSYSCONFDIR is not set: Debian's and Ubuntu's libpq are built with
// this sysconfdir.
const SystemServiceDir = "/etc/postgresql-common"

// Service is a libpq connection service (a section of pg_service.conf)
// with the file it came from. The zero value is no service.
type Service struct {
	Name     string
	File     string
	Settings map[string]string // keywords as libpq reads them: user, password, port, dbname, passfile, ...
}

// LookupService finds the service PGSERVICE names the way libpq does: in
// the user's service file (PGSERVICEFILE, else ~/.pg_service.conf), then in
// the system's (PGSYSCONFDIR/pg_service.conf, else SystemServiceDir's);
// the first file that defines it wins whole, files that do not exist are
// skipped. The files are parsed with jackc/pgservicefile, pgx's parser
// (pgconn.ParseConfig reads PGSERVICE too, but not the system file, and it
// connects to the service's host, while pgporter only takes its
// credentials). No PGSERVICE: the zero Service. getenv defaults to
// os.Getenv, home to the user's home directory.
func LookupService(getenv func(string) string, home string) (Service, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	name := getenv("PGSERVICE")
	if name == "" {
		return Service{}, nil
	}
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	var files []string
	if f := getenv("PGSERVICEFILE"); f != "" {
		files = append(files, f)
	} else if home != "" {
		files = append(files, filepath.Join(home, ".pg_service.conf"))
	}
	sys := getenv("PGSYSCONFDIR")
	if sys == "" {
		sys = SystemServiceDir
	}
	files = append(files, filepath.Join(sys, "pg_service.conf"))
	for _, file := range files {
		f, err := os.Open(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Service{}, fmt.Errorf("reading the service file: %w", err)
		}
		sf, err := pgservicefile.ParseServicefile(io.LimitReader(f, maxPasswordFile))
		f.Close()
		if err != nil {
			return Service{}, fmt.Errorf("service file %s: %w", file, err)
		}
		if s, err := sf.GetService(name); err == nil {
			return Service{Name: name, File: file, Settings: s.Settings}, nil
		}
	}
	return Service{}, fmt.Errorf("%w: PGSERVICE names %q, which none of %v defines", ErrNoService, name, files)
}
