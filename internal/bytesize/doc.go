// Package bytesize is the one way pgporter prints and reads sizes for
// people: IEC units (KiB, MiB, GiB: powers of 1024) everywhere, in messages,
// tables, rates and flags. It is not for machine output: JSON carries plain
// byte counts.
package bytesize
