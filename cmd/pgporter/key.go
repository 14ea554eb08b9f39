package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// The passphrases of an encrypted repository: each key file holds the
// repository's master key under one passphrase
// (docs/design/0010-repository-encryption.md).

func newKeyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "List, add and remove the passphrases of an encrypted repository",
		Long: `An encrypted repository's master key is held in key files, each under
one passphrase. Any of them opens the repository; adding one does not
re-encrypt anything, and removing one revokes its passphrase (but not a
copy of the master key someone already unlocked).

The passphrase that opens the repository comes from --repo-password-file, else
the file $` + chunkstore.PasswordFileEnv + ` names, else $` + crypt.PasswordEnv + `.

To change a passphrase, add a key under the new one, then remove the old
key (its ID is the "current" one of 'key list' under the old passphrase):
  pgporter key add --repo R --repo-password-file old.pass --new-password-file new.pass
  pgporter key remove --repo R --repo-password-file new.pass OLD-ID`,
	}
	c.AddCommand(newKeyListCmd(g), newKeyAddCmd(g), newKeyRemoveCmd(g))
	return c
}

// openKeyed opens the encrypted repository at repo for a key command.
func openKeyed(ctx context.Context, g *globals, repo string, lock chunkstore.LockMode) (*chunkstore.Repo, error) {
	if repo == "" {
		return nil, usagef("--repo is required")
	}
	if _, err := chunkstore.ListRepo(ctx, repo); err != nil { // a typo must create nothing
		return nil, err
	}
	r, err := chunkstore.OpenRepoWith(ctx, repo, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{Logger: g.log}, Lock: lock})
	if err != nil {
		return nil, err
	}
	if !r.Encrypted() {
		_ = r.Close()
		return nil, fmt.Errorf("%w (%s)", chunkstore.ErrNotEncryptedRepo, repo)
	}
	return r, nil
}

func newKeyListCmd(g *globals) *cobra.Command {
	var (
		repo   string
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "list --repo REPO",
		Short: "List the key files of an encrypted repository",
		Long: `Lists each key file: its ID, whether it is the one that opened the
repository now, when, where and by whom it was made, and its key
derivation's cost. A key file that does not decode is listed with why.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := openKeyed(cmd.Context(), g, repo, chunkstore.LockNone)
			if err != nil {
				return err
			}
			defer r.Close()
			keys, err := r.ListKeys(cmd.Context())
			if err != nil {
				return err
			}
			type keyJSON struct {
				ID      string           `json:"id"`
				Current bool             `json:"current"`
				Created time.Time        `json:"created,omitzero"`
				Host    string           `json:"host,omitempty"`
				User    string           `json:"user,omitempty"`
				KDF     *crypt.KDFParams `json:"kdf,omitempty"`
				Error   string           `json:"error,omitempty"`
			}
			out := make([]keyJSON, 0, len(keys))
			for _, k := range keys {
				j := keyJSON{ID: k.Name, Current: k.Name == r.KeyID()}
				if k.Err != nil {
					j.Error = userMessage(k.Err)
				} else {
					j.Created, j.Host, j.User, j.KDF = k.File.Created, k.File.Host, k.File.User, &k.File.KDF
				}
				out = append(out, j)
			}
			if asJSON {
				return g.writeJSON(out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCURRENT\tCREATED\tHOST\tUSER\tKDF")
			for _, k := range out {
				cur := ""
				if k.Current {
					cur = "*"
				}
				if k.Error != "" {
					fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t%s\n", k.ID, cur, k.Error)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, cur, k.Created.Format(time.RFC3339), k.Host, k.User, k.KDF)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "encrypted repository: a directory or s3://BUCKET/PREFIX")
	c.Flags().BoolVar(&asJSON, "json", false, "print the key files as JSON")
	return c
}

func newKeyAddCmd(g *globals) *cobra.Command {
	var (
		repo, newFile, outFile string
		generate               bool
	)
	c := &cobra.Command{
		Use:   "add --repo REPO [--new-password-file FILE | --generate --password-file-out FILE]",
		Short: "Add a passphrase to an encrypted repository",
		Long: `Adds a key file holding the repository's master key under a new
passphrase, read from --new-password-file, or asked twice on a terminal.
The repository is opened with its current passphrase (--repo-password-file,
$` + chunkstore.PasswordFileEnv + ` or $` + crypt.PasswordEnv + `). Prints the new key's ID.

--generate makes the passphrase: 32 random bytes, base64, written to the
new file --password-file-out (mode 0600). Such a passphrase cannot be
guessed, so its key file uses the cheapest key derivation allowed (about
20 ms instead of half a second): for a database host, whose
archive_command runs wal-push once per WAL segment, each in a new process.

Examples:
  pgporter key add --repo s3://backups/prod --repo-password-file /etc/pgporter/repo.pass \
      --new-password-file /etc/pgporter/admin2.pass
  pgporter key add --repo s3://backups/prod --repo-password-file /etc/pgporter/repo.pass \
      --generate --password-file-out /etc/pgporter/wal-push.pass`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var (
				pass []byte
				opts crypt.KeyOptions
				err  error
			)
			switch {
			case generate && (outFile == "" || newFile != ""):
				return usagef("--generate needs --password-file-out FILE, and no --new-password-file")
			case !generate && outFile != "":
				return usagef("--password-file-out is for --generate")
			case generate:
				if pass, err = generatePassphrase(outFile); err != nil {
					return err
				}
				opts.KDF = crypt.MinKDF
			default:
				if pass, err = newPassphrase(g, newFile); err != nil {
					return err
				}
			}
			kf, err := addKey(cmd.Context(), g, repo, pass, opts)
			if err != nil {
				if generate {
					_ = os.Remove(outFile)
				}
				return err
			}
			fmt.Fprintln(g.stdout, kf.ID)
			return nil
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "encrypted repository: a directory or s3://BUCKET/PREFIX")
	c.Flags().StringVar(&newFile, "new-password-file", "", "file holding the new passphrase (default: ask on the terminal)")
	c.Flags().BoolVar(&generate, "generate", false, "generate a random passphrase into --password-file-out, with a cheap key derivation (for wal-push)")
	c.Flags().StringVar(&outFile, "password-file-out", "", "with --generate: the new file to write the passphrase to (0600)")
	return c
}

// addKey adds a key file under pass to the encrypted repository at repo.
func addKey(ctx context.Context, g *globals, repo string, pass []byte, opts crypt.KeyOptions) (*crypt.KeyFile, error) {
	r, err := openKeyed(ctx, g, repo, chunkstore.LockShared)
	if err != nil {
		return nil, err
	}
	kf, err := r.AddKey(ctx, pass, opts)
	return kf, errors.Join(err, r.Close())
}

// generatePassphrase writes a random passphrase of 256 bits to the new file
// path, durably, and returns it.
func generatePassphrase(path string) ([]byte, error) {
	var secret [32]byte
	_, _ = rand.Read(secret[:]) // crypto/rand.Read never fails
	pass := []byte(base64.StdEncoding.EncodeToString(secret[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--password-file-out: %w", err)
	}
	_, err = f.Write(append(pass, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("--password-file-out: %w", err)
	}
	return pass, nil
}

func newKeyRemoveCmd(g *globals) *cobra.Command {
	var repo string
	c := &cobra.Command{
		Use:   "remove --repo REPO ID",
		Short: "Remove a passphrase from an encrypted repository",
		Long: `Removes key file ID (see 'pgporter key list'), under the repository's
exclusive lock. The last key file that decodes is never removed: without
one, nobody could open the repository again. Removing the key that opened
the repository now is allowed, with a warning: its passphrase stops
working.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := openKeyed(cmd.Context(), g, repo, chunkstore.LockExclusive)
			if err != nil {
				return err
			}
			defer r.Close()
			if err := r.RemoveKey(cmd.Context(), args[0]); err != nil {
				return err
			}
			if args[0] == r.KeyID() {
				g.log.Warn("removed the key this command opened the repository with: its passphrase no longer opens it", "key", args[0])
			}
			fmt.Fprintf(g.stdout, "key %s removed\n", args[0])
			return r.Close()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "encrypted repository: a directory or s3://BUCKET/PREFIX")
	return c
}

// newPassphrase returns a new passphrase: from file, or asked twice on
// the terminal when file is "".
func newPassphrase(g *globals, file string) ([]byte, error) {
	if file != "" {
		p, err := crypt.ReadPassphraseFile(file)
		if err != nil {
			return nil, usageError{err}
		}
		return p, nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, usagef("give the new passphrase in a file (--new-password-file), or run on a terminal to be asked for it")
	}
	fmt.Fprint(g.stderr, "new passphrase: ")
	p, err := term.ReadPassword(fd)
	fmt.Fprintln(g.stderr)
	if err != nil {
		return nil, err
	}
	fmt.Fprint(g.stderr, "again: ")
	again, err := term.ReadPassword(fd)
	fmt.Fprintln(g.stderr)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(p, again) {
		return nil, usagef("the two passphrases differ")
	}
	if len(p) == 0 {
		return nil, usageError{crypt.ErrEmptyPassphrase}
	}
	return p, nil
}
