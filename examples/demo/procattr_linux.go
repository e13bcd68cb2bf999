package main

import "syscall"

// sidecarProcAttr puts the sidecar in its own process group; Pdeathsig makes a demo killed
// outright take the sidecar with it.
func sidecarProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
