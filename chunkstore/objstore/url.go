package objstore

import (
	"fmt"
	"net/url"
	"strings"
)

// ParseURL splits a repository URL s3://BUCKET/PREFIX into its bucket and
// key prefix (without slashes at either end; "" for the bucket's root). The
// endpoint, region and credentials are not part of it: they come from the
// AWS environment and profiles.
func ParseURL(s string) (bucket, prefix string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("%w %q: %w", ErrBadURL, s, err)
	}
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("%w %q: %s", ErrBadURL, s, why)
	}
	switch {
	case u.Scheme != "s3":
		return bad("want s3://BUCKET/PREFIX")
	case u.Opaque != "":
		return bad("want s3://BUCKET/PREFIX, with two slashes")
	case u.User != nil:
		return bad("credentials do not go in the URL: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile")
	case u.Port() != "":
		return bad("the endpoint does not go in the URL: use AWS_ENDPOINT_URL or a profile's endpoint_url")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return bad("no query or fragment is understood")
	}
	bucket = u.Host
	if err := validBucket(bucket); err != nil {
		return bad(err.Error())
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		if err := ValidName(prefix); err != nil {
			return bad("prefix: " + err.Error())
		}
	}
	return bucket, prefix, nil
}

// validBucket applies S3's rules for bucket names (the ones that all
// regions share).
func validBucket(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket name %q: must be 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("bucket name %q: only lowercase letters, digits, '-' and '.'", b)
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) {
		return fmt.Errorf("bucket name %q: must begin and end with a letter or digit", b)
	}
	if strings.Contains(b, "..") {
		return fmt.Errorf("bucket name %q: two dots in a row", b)
	}
	return nil
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
