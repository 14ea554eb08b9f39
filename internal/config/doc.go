// Package config gives every flag of the pgporter CLI two more sources
// than the command line: an environment variable and a key in a TOML file.
//
// The order is: a flag given on the command line, then its environment
// variable, then the file, then the flag's default. Names are derived from
// the commands, never listed by hand, so that a new flag is configurable
// the day it is added:
//
//   - the key of flag --listen of 'pgporter mover serve' is listen in the
//     table [mover.serve]; a flag of every command (--home) is a key at the
//     top of the file;
//   - its environment variable is PGPORTER_MOVER_SERVE_LISTEN, and that of
//     --home is PGPORTER_HOME.
//
// A key that names no flag is an error that names the key and the file: a
// typo is never silently ignored.
//
// It is not for settings that are not flags (those stay environment
// variables of their own, such as PGPASSWORD), and it does not parse TOML
// itself: github.com/BurntSushi/toml does.
package config
