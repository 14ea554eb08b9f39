// Package pgcatalog holds the catalog queries that both a backup (reading
// the running server it backs up) and an export's checks (reading the
// throwaway instance) run, so that what one records the other understands.
package pgcatalog

// CLibraries lists the libraries of a database's C functions, with the
// extensions they belong to and whether a column of a table or
// materialized view has a type whose input or output they implement (then
// pg_dump needs them to read the data; a domain over such a type is not
// seen). The columns' types are collected once: pg_attribute has no index
// on the type. Its rows scan into CLibrary, by position.
const CLibraries = `WITH used AS (
		SELECT DISTINCT a.atttypid FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
		 WHERE a.attnum > 0 AND NOT a.attisdropped AND r.relkind IN ('r', 'p', 'm'))
	SELECT p.probin,
		coalesce(string_agg(DISTINCT e.extname, ', '), '') AS exts,
		coalesce(bool_or(t.oid IN (SELECT atttypid FROM used) OR t.typarray IN (SELECT atttypid FROM used)), false) AS in_data
	  FROM pg_proc p
	  JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'c'
	  LEFT JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
	  LEFT JOIN pg_extension e ON e.oid = d.refobjid
	  LEFT JOIN pg_type t ON p.oid IN (t.typinput, t.typoutput, t.typreceive, t.typsend)
	 WHERE p.probin IS NOT NULL AND p.probin <> ''
	 GROUP BY p.probin ORDER BY p.probin`

// CLibrary is a row of CLibraries.
type CLibrary struct {
	Probin     string `json:"probin"`
	Extensions string `json:"extensions,omitempty"` // comma-separated; empty for a function of no extension
	InData     bool   `json:"in_data,omitempty"`
}
