package main

import (
	"fmt"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// etcdCluster is where a crash run in etcd mode keeps its keys: keygate runs
// with an etcd block (one node, node_id "crash") instead of a Pebble store,
// and every acknowledged change must be in etcd after each kill -9.
type etcdCluster struct {
	Endpoint string // host:port
	Prefix   string // a prefix no one else uses; the run's key space
	// Server, when set, is an etcd server the run may kill: every
	// KillEvery-th iteration (0: never) it gets SIGKILL just before
	// keygate does, with writes in flight, and restarts on its data before
	// keygate restarts.
	Server    etcdServer
	KillEvery int
}

// etcdServer is an etcd server that can be killed and restarted on its data
// (etcdtest.Server).
type etcdServer interface {
	Pause()
	Resume() error
}

// killsAt tells whether iteration it kills the etcd server too.
func (e *etcdCluster) killsAt(it int) bool {
	return e != nil && e.Server != nil && e.KillEvery > 0 && it%e.KillEvery == 0
}

// startEtcd starts an etcd server on free loopback ports (data on /dev/shm
// when it exists) for a crash run; the caller stops it.
func startEtcd() (*etcdtest.Server, error) {
	srv, err := etcdtest.Start()
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	return srv, nil
}

// runPrefix is a fresh etcd key prefix for one run.
func runPrefix(seed uint64) string {
	return fmt.Sprintf("/keygate-crash/%d-%x/", time.Now().UnixNano(), seed&0xffffff)
}
