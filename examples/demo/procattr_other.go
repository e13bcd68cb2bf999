//go:build unix && !linux

package main

import "syscall"

// sidecarProcAttr puts the sidecar in its own process group (no Pdeathsig outside Linux).
func sidecarProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
