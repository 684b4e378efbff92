package store

import (
	"testing"

	"github.com/keygate/keygate/store/etcdtest"
)

// etcdSuite are the store tests that also run on the etcd KV in a plain
// `go test ./store/`: the lifecycle, limits, revocation, invalidation and
// usage rules, which must not depend on the backend. make test runs every
// store test on etcd as well (KEYGATE_STORE_TESTS=etcd, helpers_test.go).
var etcdSuite = []struct {
	name string
	test func(*testing.T)
}{
	{"LimitsMaxKeysPerUser", TestLimitsMaxKeysPerUser},
	{"LimitsTenantKeyLimit", TestLimitsTenantKeyLimit},
	{"DisabledTenant", TestDisabledTenant},
	{"Lifecycle", TestLifecycle},
	{"RotateExpiredKey", TestRotateExpiredKey},
	{"RevokeKeysBulk", TestRevokeKeysBulk},
	{"DeleteOwnerKeys", TestDeleteOwnerKeys},
	{"Expiry", TestExpiry},
	{"TenantIsolation", TestTenantIsolation},
	{"ListKeys", TestListKeys},
	{"DefaultGroup", TestDefaultGroup},
	{"RevocationRace", TestRevocationRace},
	{"RotationRace", TestRotationRace},
	{"BulkRevocationRace", TestBulkRevocationRace},
	{"DeleteRace", TestDeleteRace},
	{"StaleFillIgnored", TestStaleFillIgnored},
	{"NegativeCache", TestNegativeCache},
	{"ConcurrentCreateRespectsLimits", TestConcurrentCreateRespectsLimits},
	{"Usage", TestUsage},
	{"UsageOfDeletedKeyNotResurrected", TestUsageOfDeletedKeyNotResurrected},
	{"Groups", TestGroups},
	{"UsersAndTokens", TestUsersAndTokens},
	{"DeleteUserRevokesKeys", TestDeleteUserRevokesKeys},
	{"EventsForEveryChange", TestEventsForEveryChange},
	{"ListEvents", TestListEvents},
	{"BulkRevokeDeliversEverySecret", TestBulkRevokeDeliversEverySecret},
}

// TestSuiteOnEtcd runs etcdSuite with every store memStore opens on etcd
// (the shared test server, a fresh prefix per store).
func TestSuiteOnEtcd(t *testing.T) {
	for _, tc := range etcdSuite {
		t.Run(tc.name, func(t *testing.T) {
			etcdtest.Shared(t) // fails here, with how to install etcd, when there is none
			opened := 0
			testKV = func(t testing.TB, o *Options) { opened++; kvFactories["etcd"](t, o) }
			defer func() { testKV = nil }()
			tc.test(t)
			if opened == 0 {
				t.Fatal("the test opened no store on etcd")
			}
		})
	}
}
