//go:build unix

package proxy

import "syscall"

// rawReadsSupported: sockets are file descriptors read with read(2) and ended with shutdown(2).
const rawReadsSupported = true

func readFD(fd int, p []byte) (int, error) { return syscall.Read(fd, p) }

func shutdownFD(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) }
