package staging

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNearNames(t *testing.T) {
	names := []string{"public.orders", "public.order_lines", "sales.orders", "public.customers", `public."Invoices"`}
	require.Equal(t, []string{"public.orders", "sales.orders"}, nearNames("order", names, 2))
	require.Equal(t, []string{`public."Invoices"`}, nearNames("invoice*", names, 3))
	require.Equal(t, []string{"sales.orders"}, nearNames("sale.orders", names, 3))
	require.Empty(t, nearNames("zebra", names, 3))
}

func TestDumpFilterArgs(t *testing.T) {
	f := &DumpFilter{Tables: []string{"orders"}, ExcludeTables: []string{"logs_*"}, DataOnly: true}
	require.Equal(t, []string{"--table=orders", "--exclude-table=logs_*", "--data-only", "--strict-names"}, f.args())
	require.Equal(t, []string{"--exclude-table=x"}, (&DumpFilter{ExcludeTables: []string{"x"}}).args(), "exclude patterns need not match")
	require.True(t, (*DumpFilter)(nil).IsZero())
	require.Error(t, (&DumpFilter{DataOnly: true, SchemaOnly: true}).Validate())
	require.Error(t, (&DumpFilter{Tables: []string{" "}}).Validate())
}
