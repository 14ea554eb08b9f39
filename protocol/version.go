package protocol

import "fmt"

// Protocol versions this build speaks. A connection uses one version, the
// one Negotiate picks from the two Hello messages.
const (
	Version    uint16 = 1
	MinVersion uint16 = 1
)

// NewHello returns the Hello this build sends, naming software (cut to
// MaxSoftwareLen bytes).
func NewHello(software string) *Hello {
	return &Hello{Version: Version, MinVersion: MinVersion, Software: truncate(software, MaxSoftwareLen)}
}

// Negotiate returns the version a connection uses: the lower of the two
// Version fields, provided it is at least both MinVersion fields. Otherwise
// it returns an error matching ErrVersion; the side that finds it sends
// ToWire(err) and closes the connection with CloseRefused.
func Negotiate(local, remote *Hello) (uint16, error) {
	v := min(local.Version, remote.Version)
	if v == 0 || v < local.MinVersion || v < remote.MinVersion {
		return 0, fmt.Errorf("%w: this side speaks %d to %d, the peer (%q) %d to %d",
			ErrVersion, local.MinVersion, local.Version, truncate(remote.Software, 64), remote.MinVersion, remote.Version)
	}
	return v, nil
}
