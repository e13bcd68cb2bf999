// Package regularfile reads configuration files defensively: only a regular file is read, and
// only up to a bound, so that a FIFO, a device such as /dev/zero or a runaway file can neither
// hang start-up or a reload nor exhaust memory.
package regularfile

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// Read returns the contents of the regular file at path, or an error when path is not a
// regular file (after following symlinks) or is larger than limit bytes. Opening does not
// block on a FIFO.
func Read(path string, limit int64) ([]byte, error) {
	f, err := Open(path, limit)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// Open opens the regular file at path for reading, refusing anything else and, when limit is
// above 0, a file larger than limit bytes. The caller still bounds what it reads: the file may
// grow after the check.
func Open(path string, limit int64) (*os.File, error) {
	// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, describe(st.Mode()))
	}
	if limit > 0 && st.Size() > limit {
		f.Close()
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return f, nil
}

func describe(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}
