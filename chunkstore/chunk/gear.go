package chunk

// gear is the 256-entry table of the gear hash. It is part of the on-disk and
// wire format (AlgorithmGearV1): chunk boundaries, and so chunk IDs, depend on
// it. It is generated, not typed in, from splitmix64 with a fixed seed.
var gear = func() (t [256]uint64) {
	x := uint64(0x7067706f72746572) // "pgporter"
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()
