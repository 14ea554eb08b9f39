package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/bytesize"
)

func newRepoCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "repo",
		Short: "Work on whole repositories (create an encrypted one, copy one into another)",
	}
	c.AddCommand(newRepoInitCmd(g), newRepoCopyCmd(g))
	return c
}

func newRepoInitCmd(g *globals) *cobra.Command {
	var (
		repo    string
		encrypt bool
	)
	c := &cobra.Command{
		Use:   "init --repo REPO [--encrypt]",
		Short: "Create a repository, encrypted if asked",
		Long: `Creates a repository at --repo: a directory or s3://BUCKET/PREFIX (the
bucket must exist). A plain repository needs no init: the first backup
creates it. An encrypted one must be created by 'repo init --encrypt',
since encryption is chosen once, for the repository's life.

With --encrypt, a random master key seals every chunk, index, restore
point, WAL record and recorded outcome (XChaCha20-Poly1305; chunk IDs
become keyed BLAKE3 object IDs, so the store never sees a content hash). The
master key is kept in a key file under the passphrase read from
--repo-password-file, else $` + crypt.PasswordEnv + `, else asked twice on a terminal
(argon2id: about half a second per unlock). Every command that opens the
repository then needs one of its passphrases ('pgporter key add' adds
more). Losing every passphrase loses the repository: keep one safe.

Examples:
  pgporter repo init --repo /srv/pgporter/repo --encrypt --repo-password-file /etc/pgporter/repo.pass
  pgporter repo init --repo s3://backups/prod --encrypt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo == "" {
				return usagef("repo init needs --repo REPO")
			}
			file := passwordFileFlag(cmd)
			if file == "" {
				file = os.Getenv(chunkstore.PasswordFileEnv)
			}
			if !encrypt {
				if file != "" {
					return usagef("--repo-password-file is for an encrypted repository: add --encrypt")
				}
				if _, err := chunkstore.ListRepo(cmd.Context(), repo); err == nil {
					return fmt.Errorf("%w: %s", chunkstore.ErrRepoExists, repo)
				}
				r, err := chunkstore.OpenRepo(cmd.Context(), repo, g.log)
				if err != nil {
					return err
				}
				if err := r.Close(); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "created repository %s\n", repo)
				return nil
			}
			pass, err := crypt.ResolvePassphrase(file)
			if errors.Is(err, crypt.ErrNoPassphrase) {
				pass, err = newPassphrase(g, "")
			}
			if err != nil {
				return err
			}
			id, err := chunkstore.InitRepo(cmd.Context(), repo, chunkstore.InitOptions{Passphrase: pass})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "created encrypted repository %s (key %s)\n", repo, id)
			return nil
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository to create: a directory or s3://BUCKET/PREFIX")
	c.Flags().BoolVar(&encrypt, "encrypt", false, "encrypt it, under a passphrase (--repo-password-file, $"+crypt.PasswordEnv+", or asked)")
	return c
}

func newRepoCopyCmd(g *globals) *cobra.Command {
	var (
		from, to, fromFile, toFile string
		asJSON                     bool
	)
	c := &cobra.Command{
		Use:   "copy --from REPO --to REPO",
		Short: "Copy the restore points and WAL files one repository lacks from another, chunks deduplicated",
		Long: `Copies into --to every restore point of --from that --to does not hold,
oldest first, with the chunks of each that --to lacks, then every WAL file
of --from's archive (wal-push) that --to's lacks, each with the time it was
pushed. A WAL file that --to archives already with other content stops the
copy (exit 6): the two archives are of different histories. Either may be a
directory or s3://BUCKET/PREFIX: moving a repository to object storage,
back, or between buckets. --to is created if it is a directory that does
not exist yet (a bucket must exist), unless --from is encrypted: a copy of
an encrypted repository goes into one made first by 'repo init'.

Each restore point and WAL file appears in --to only once all its chunks
are durable there, so an interrupted copy leaves --to consistent; run it again and it
copies only what is still missing. Every chunk is read back and checked
against its BLAKE3 before it is stored.

Examples:
  pgporter repo copy --from /srv/pgporter/repo --to s3://backups/prod
  pgporter repo copy --from s3://backups/prod --to s3://backups-dr/prod --json

Into an encrypted repository (each chunk sealed anew under its key):
  pgporter repo init --repo s3://backups/sealed --encrypt --repo-password-file new.pass
  pgporter repo copy --from /srv/pgporter/repo --to s3://backups/sealed --to-password-file new.pass`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usagef("repo copy needs --from REPO and --to REPO")
			}
			ctx := chunkstore.WithPasswordFile(cmd.Context(), fromFile)
			if _, err := chunkstore.ListRepo(ctx, from); err != nil { // a typo must create nothing
				return err
			}
			src, err := chunkstore.OpenRepo(ctx, from, g.log)
			if err != nil {
				return err
			}
			defer src.Close()
			// Each has a passphrase of its own.
			toCtx := chunkstore.WithPasswordFile(ctx, toFile)
			if _, err := chunkstore.ListRepo(toCtx, to); src.Encrypted() && errors.Is(err, chunkstore.ErrNotRepo) {
				// Created here, --to would be plain: the data of an
				// encrypted repository in the clear, unasked.
				return usagef("--from is encrypted and --to holds no repository: create it first, with 'pgporter repo init --repo %s --encrypt' (or without --encrypt, for a copy in the clear)", to)
			}
			dst, err := chunkstore.OpenRepo(toCtx, to, g.log)
			if err != nil {
				return err
			}
			defer dst.Close()
			st, err := chunkstore.CopyRepo(ctx, src, dst, func(st chunkstore.CopyStats) {
				fmt.Fprintf(g.stderr, "copied %d restore points, %d WAL files: %d chunks, %s\n", st.Points, st.WAL, st.Chunks, bytesize.Format(st.Bytes))
			})
			if err != nil {
				return err
			}
			if err := dst.Close(); err != nil {
				return err
			}
			if asJSON {
				return g.writeJSON(st)
			}
			fmt.Fprintf(g.stdout, "%d restore points copied (%d present already), %d WAL files (%d present already): %d chunks, %s (%d chunks present already)\n",
				st.Points, st.PointsHeld, st.WAL, st.WALHeld, st.Chunks, bytesize.Format(st.Bytes), st.ChunksHeld)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "repository to copy from: a directory or s3://BUCKET/PREFIX")
	c.Flags().StringVar(&to, "to", "", "repository to copy into: a directory or s3://BUCKET/PREFIX")
	c.Flags().StringVar(&fromFile, "from-password-file", "", "file holding the passphrase of --from, if it is encrypted (default: $"+chunkstore.PasswordFileEnv+", $"+crypt.PasswordEnv+")")
	c.Flags().StringVar(&toFile, "to-password-file", "", "file holding the passphrase of --to, if it is encrypted (default: $"+chunkstore.PasswordFileEnv+", $"+crypt.PasswordEnv+"); create an encrypted --to first with 'repo init --encrypt'")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary, and nothing else, on stdout")
	return c
}
