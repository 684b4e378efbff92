package main

import "syscall"

// childAttr makes keygate processes die with this one (a killed test must
// not leave servers behind holding ports and store locks).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
