package mover

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func randomPeerID(t testing.TB) PeerID {
	t.Helper()
	var id PeerID
	_, err := rand.Read(id[:])
	require.NoError(t, err)
	return id
}

func TestPeerIDRoundTrip(t *testing.T) {
	ids := []PeerID{{}, {0xff, 0xff}, PeerIDFromCert([]byte("certificate"))}
	for range 200 {
		ids = append(ids, randomPeerID(t))
	}
	for _, id := range ids {
		s := id.String()
		require.Len(t, s, 63, "8 groups of 7 with 7 dashes")
		groups := strings.Split(s, "-")
		require.Len(t, groups, 8)
		for _, g := range groups {
			require.Len(t, g, 7)
		}
		require.Equal(t, groups[0], id.Short())

		for _, form := range []string{
			s,
			strings.ToLower(s),
			strings.ReplaceAll(s, "-", ""),
			strings.ReplaceAll(s, "-", " "),
			"  " + strings.ToLower(strings.ReplaceAll(s, "-", "")) + " ",
		} {
			got, err := ParsePeerID(form)
			require.NoError(t, err, form)
			require.Equal(t, id, got, form)
		}

		text, err := id.MarshalText()
		require.NoError(t, err)
		var back PeerID
		require.NoError(t, back.UnmarshalText(text))
		require.Equal(t, id, back)
	}
}

func TestPeerIDTypoDetected(t *testing.T) {
	for range 50 {
		id := randomPeerID(t)
		s := []byte(strings.ReplaceAll(id.String(), "-", ""))
		// Every single-character substitution anywhere is caught: by a check
		// character or, in the last group's unused bits, by canonical form.
		for pos := range s {
			orig := s[pos]
			for _, c := range []byte(base32Alphabet) {
				if c == orig {
					continue
				}
				s[pos] = c
				_, err := ParsePeerID(string(s))
				require.ErrorIs(t, err, ErrBadPeerID, "substitution at %d not detected", pos)
			}
			s[pos] = orig
		}
	}

	// The message tells the operator what went wrong.
	s := []byte(randomPeerID(t).String())
	s[0] = map[bool]byte{true: 'B', false: 'A'}[s[0] == 'A']
	_, err := ParsePeerID(string(s))
	require.ErrorContains(t, err, "check character mismatch: typo?")
}

func TestParsePeerIDLookalikes(t *testing.T) {
	// 0, 1 and 8 are not base32 digits; people type them for O, I and B.
	var id PeerID
	for {
		id = randomPeerID(t)
		if strings.ContainsAny(id.String(), "OIB") {
			break
		}
	}
	typed := strings.NewReplacer("O", "0", "I", "1", "B", "8").Replace(id.String())
	got, err := ParsePeerID(typed)
	require.NoError(t, err)
	require.Equal(t, id, got)
}

func TestParsePeerIDInvalid(t *testing.T) {
	valid := randomPeerID(t).String()
	for _, tc := range []struct{ name, in, msg string }{
		{"empty", "", "0 characters"},
		{"short", valid[:len(valid)-1], "characters, want 56"},
		{"long", valid + "A", "longer than 56"},
		{"bad char", "!" + valid[1:], "not in A-Z, 2-7"},
		{"unpadded 52", strings.ReplaceAll(valid, "-", "")[:52], "want 56"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePeerID(tc.in)
			require.ErrorIs(t, err, ErrBadPeerID)
			require.ErrorContains(t, err, tc.msg)
		})
	}
}

func FuzzParsePeerID(f *testing.F) {
	f.Add(PeerIDFromCert(nil).String())
	f.Add("")
	f.Add("aaaaaaa-aaaaaaa-aaaaaaa-aaaaaaa-aaaaaaa-aaaaaaa-aaaaaaa-aaaaaaa")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParsePeerID(s)
		if err != nil {
			return
		}
		again, err := ParsePeerID(id.String())
		if err != nil || again != id {
			t.Fatalf("%q parsed as %s, which does not parse back: %v", s, id, err)
		}
	})
}
