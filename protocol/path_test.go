package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestValidPath(t *testing.T) {
	long := strings.Repeat("a", MaxPathElemLen)
	tests := []struct {
		path string
		ok   bool
	}{
		{"a", true},
		{"toc.dat", true},
		{"db/1234.dat", true},
		{".hidden", true},
		{"a..b", true},
		{"...", true},
		{"dir/..x/y", true},
		{"é/ü", true},
		{long, true},
		{strings.Repeat(long+"/", 15) + strings.Repeat("b", 254) + "/c", true},
		{strings.Repeat(long+"/", 15) + strings.Repeat("b", 255) + "/c", false},
		{"", false},
		{".", false},
		{"..", false},
		{"../etc/passwd", false},
		{"a/../../etc", false},
		{"a/..", false},
		{"a/./b", false},
		{"./a", false},
		{"a/.", false},
		{"/etc/passwd", false},
		{"/", false},
		{"//a", false},
		{"a//b", false},
		{"a/", false},
		{"a\\..\\b", false},
		{"..\\etc", false},
		{"C:\\x", false},
		{"a\x00b", false},
		{"\xff", false},
		{"a/\xc3", false},
		{long + "a", false},
		{"d/" + long + "a", false},
		{strings.Repeat("a/", MaxPathLen/2) + "a", false},
	}
	for _, tc := range tests {
		err := ValidPath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("ValidPath(%q) = %v, want ok=%v", trunc(tc.path), err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadPath) {
			t.Errorf("ValidPath(%q) = %v, not ErrBadPath", trunc(tc.path), err)
		}
	}
}

func trunc(s string) string { return truncate(s, 40) }

func TestValidAbsPath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"/", true},
		{"/srv", true},
		{"/srv/dumps/app", true},
		{"/srv/.x", true},
		{"", false},
		{"srv", false},
		{"//srv", false},
		{"/srv/", false},
		{"/srv/../etc", false},
		{"/..", false},
		{"/./srv", false},
		{"/srv\\x", false},
		{"/srv\x00", false},
		{"/\xff", false},
		{"/" + strings.Repeat("a", MaxPathElemLen+1), false},
		{"/" + strings.Repeat("a/", MaxPathLen/2), false},
	}
	for _, tc := range tests {
		err := ValidAbsPath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("ValidAbsPath(%q) = %v, want ok=%v", trunc(tc.path), err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadPath) {
			t.Errorf("ValidAbsPath(%q) = %v, not ErrBadPath", trunc(tc.path), err)
		}
	}
}

func TestValidTransferID(t *testing.T) {
	for id, ok := range map[string]bool{
		"a": true, "t-2026.11.25_x": true, "...": true, ".a": true, strings.Repeat("Z", MaxTransferIDLen): true,
		"": false, ".": false, "..": false, "a/b": false, "a b": false, "é": false, "a\x00": false,
		"../x": false, strings.Repeat("Z", MaxTransferIDLen+1): false,
	} {
		err := ValidTransferID(id)
		if (err == nil) != ok {
			t.Errorf("ValidTransferID(%q) = %v, want ok=%v", trunc(id), err, ok)
		}
		if err != nil && !errors.Is(err, ErrBadPath) {
			t.Errorf("ValidTransferID(%q) = %v, not ErrBadPath", trunc(id), err)
		}
	}
}
