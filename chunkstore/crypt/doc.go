// Package crypt is the cryptographic core of an encrypted repository
// (docs/design/0010-repository-encryption.md): the repository's master key
// and the subkeys derived from it, sealing and opening of the objects a
// repository stores, keyed object IDs that hide chunk IDs from the store,
// key files that protect the master key with a passphrase, and the sources
// a passphrase is read from.
//
//   - MasterKey seals and opens objects with XChaCha20-Poly1305 under random
//     24-byte nonces, the object's kind and name bound as associated data, so
//     that an object moved to another name or role fails to open
//     (ErrTampered). It computes ObjectID, the keyed BLAKE3 of a chunk ID,
//     and keyed BLAKE3 MACs for objects that are authenticated but stay
//     readable in place (index runs).
//   - A key file holds the master key sealed under a key derived from a
//     passphrase with argon2id; several key files may unlock one master key
//     (InitKeys, AddKey, RemoveKey, ListKeys, Unlock over a KeyStore). A wrong
//     passphrase is ErrWrongPassphrase, told apart from a corrupt key file
//     (ErrKeyFileCorrupt), a tampered one (ErrTampered) and one whose KDF
//     parameters are below the floor (ErrWeakKDF).
//   - ReadPassphraseFile, PassphraseFromEnv and ResolvePassphrase read a
//     passphrase from --repo-password-file or PGPORTER_REPO_PASSWORD.
//
// It is not the repository's layout: which objects are sealed, under which
// names, and how records sit in packs are chunkstore's (the design note
// proposes them). Apart from DirKeys, a KeyStore over a local directory, it
// does no I/O of its own.
package crypt
