package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestNegotiate(t *testing.T) {
	tests := []struct {
		name          string
		local, remote Hello
		want          uint16
	}{
		{"same", Hello{Version: 1, MinVersion: 1}, Hello{Version: 1, MinVersion: 1}, 1},
		{"peer newer", Hello{Version: 1, MinVersion: 1}, Hello{Version: 3, MinVersion: 1}, 1},
		{"peer older", Hello{Version: 3, MinVersion: 2}, Hello{Version: 2, MinVersion: 1}, 2},
		{"peer too new", Hello{Version: 1, MinVersion: 1}, Hello{Version: 3, MinVersion: 2}, 0},
		{"peer too old", Hello{Version: 3, MinVersion: 2}, Hello{Version: 1, MinVersion: 1}, 0},
		{"peer version 0", Hello{Version: 1, MinVersion: 1}, Hello{}, 0},
		{"peer min above its max", Hello{Version: 2, MinVersion: 1}, Hello{Version: 1, MinVersion: 2}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, swap := range []bool{false, true} {
				a, b := &tc.local, &tc.remote
				if swap {
					a, b = b, a
				}
				v, err := Negotiate(a, b)
				if tc.want == 0 {
					if !errors.Is(err, ErrVersion) || ToWire(err).Code != CodeVersion {
						t.Fatalf("Negotiate = %d, %v; want ErrVersion", v, err)
					}
					continue
				}
				if err != nil || v != tc.want {
					t.Fatalf("Negotiate = %d, %v; want %d", v, err, tc.want)
				}
			}
		})
	}
	h := NewHello("pgporter test")
	if h.Version != Version || h.MinVersion != MinVersion || Version != 12 || MinVersion != 3 {
		t.Fatalf("NewHello = %+v", h)
	}
	if v, err := Negotiate(h, NewHello("peer")); v != Version || err != nil {
		t.Fatal(v, err)
	}
	// A protocol 3 peer (no joined connections) is spoken to in 3.
	if v, err := Negotiate(h, &Hello{Version: 3, MinVersion: 3}); v != 3 || err != nil {
		t.Fatal(v, err)
	}
	// A protocol 2 peer hashes FileEnd differently: refused, both ways,
	// with both ranges named.
	v2 := &Hello{Version: 2, MinVersion: 2, Software: "pgporter v2"}
	for _, pair := range [][2]*Hello{{h, v2}, {v2, h}} {
		_, err := Negotiate(pair[0], pair[1])
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "2 to 2") || !strings.Contains(err.Error(), "3 to 12") {
			t.Fatalf("Negotiate with a v2 peer: %v", err)
		}
	}
}
