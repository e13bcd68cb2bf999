//go:build !unix

package proxy

import "errors"

// rawReadsSupported: elsewhere connections are read through net.Conn only, and closed.
const rawReadsSupported = false

func readFD(int, []byte) (int, error) { return 0, errors.ErrUnsupported }

func shutdownFD(uintptr) {}
