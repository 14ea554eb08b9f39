package staging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// NormalizeLocale returns the name glibc files a locale under, so that the
// names a backup records and those 'locale -a' prints compare equal:
// "en_US.UTF-8" and "en_US.utf8" are one locale. As glibc does
// (_nl_normalize_codeset), the codeset after the dot is lower-cased and
// loses everything but letters and digits; the language, territory and
// "@modifier" are kept as written.
func NormalizeLocale(name string) string {
	name = strings.TrimSpace(name)
	base, mod, hasMod := strings.Cut(name, "@")
	lang, codeset, ok := strings.Cut(base, ".")
	if !ok {
		return name
	}
	var b strings.Builder
	for _, r := range strings.ToLower(codeset) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	out := lang + "." + b.String()
	if hasMod {
		out += "@" + mod
	}
	return out
}

// builtinLocale reports whether a locale needs nothing installed: C and
// POSIX are in every libc, and PostgreSQL takes an empty name as the
// environment's (C.UTF-8 for the staging instance).
func builtinLocale(name string) bool {
	switch NormalizeLocale(name) {
	case "", "C", "POSIX", "C.utf8":
		return true
	}
	return false
}

// InstalledLocales lists the locales of this host, as 'locale -a' prints
// them.
func InstalledLocales() ([]string, error) {
	out, err := exec.Command("locale", "-a").Output()
	if err != nil {
		return nil, fmt.Errorf("listing the installed locales (locale -a): %w", err)
	}
	return strings.Fields(string(out)), nil
}

// MissingLocales returns the names in used that are not among installed,
// compared normalized, each once, in the order of used.
func MissingLocales(used, installed []string) []string {
	have := map[string]bool{}
	for _, l := range installed {
		have[NormalizeLocale(l)] = true
	}
	var missing []string
	for _, l := range used {
		if builtinLocale(l) || have[NormalizeLocale(l)] || slices.Contains(missing, l) {
			continue
		}
		missing = append(missing, l)
	}
	return missing
}

// codesetNames are the spellings /etc/locale.gen uses for the codesets
// NormalizeLocale folds.
var codesetNames = map[string]string{
	"utf8":      "UTF-8",
	"iso88591":  "ISO-8859-1",
	"iso885915": "ISO-8859-15",
	"iso88592":  "ISO-8859-2",
	"iso88595":  "ISO-8859-5",
	"iso88597":  "ISO-8859-7",
	"iso88599":  "ISO-8859-9",
	"koi8r":     "KOI8-R",
	"eucjp":     "EUC-JP",
	"euckr":     "EUC-KR",
	"gb2312":    "GB2312",
	"gbk":       "GBK",
	"big5":      "BIG5",
	"cp1251":    "CP1251",
}

// LocaleGenLine is the line of /etc/locale.gen that makes locale-gen build
// name ("de_DE.UTF-8 UTF-8"), or "" when the name carries no codeset to
// tell it by.
func LocaleGenLine(name string) string {
	n := NormalizeLocale(name)
	lang, codeset, ok := strings.Cut(n, ".")
	if !ok || codeset == "" {
		return ""
	}
	mod := ""
	if i := strings.IndexByte(codeset, '@'); i >= 0 {
		codeset, mod = codeset[:i], codeset[i:]
	}
	cs, known := codesetNames[codeset]
	if !known {
		cs = strings.ToUpper(codeset)
	}
	return fmt.Sprintf("%s.%s%s %s", lang, cs, mod, cs)
}

// MissingLocaleHint says how to install the locale name on Debian.
func MissingLocaleHint(name string) string {
	gen := "add its line from /usr/share/i18n/SUPPORTED to /etc/locale.gen"
	if line := LocaleGenLine(name); line != "" {
		gen = fmt.Sprintf("add the line %q to /etc/locale.gen", line)
	}
	return fmt.Sprintf("install the Debian package locales-all, or the package locales and %s and run locale-gen", gen)
}

// confLocaleRe matches the locale settings initdb writes into
// postgresql.conf; the server refuses to start when one names a locale the
// host lacks.
var confLocaleRe = regexp.MustCompile(`(?m)^\s*(lc_messages|lc_monetary|lc_numeric|lc_time)\s*=?\s*'([^']*)'`)

// ConfLocales returns the lc_* settings of dataDir's configuration files
// (the last setting of each wins, postgresql.auto.conf last), by name.
func ConfLocales(dataDir string) map[string]string {
	out := map[string]string{}
	for _, f := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		b, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil {
			continue
		}
		for _, m := range confLocaleRe.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = m[2]
		}
	}
	return out
}
