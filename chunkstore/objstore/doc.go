// Package objstore is the object-store layer beneath a repository on object
// storage: a Backend holds named, immutable objects (created once, read
// whole or by byte range, listed, deleted), and is implemented by a local
// directory (Dir) and by an S3 bucket (S3). WithRetry wraps any Backend with
// bounded retries of transient failures.
//
// It is not a repository: it knows nothing of packs, index runs, restore
// points or locks, and it neither encrypts nor checks content. The
// repository layers those on it (docs/design/0011-object-storage.md,
// "Backend").
package objstore
