package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/mdlayher/vsock"
)

// vsockScheme marks a --web.listen-address on a VM socket (virtio-vsock), for a sidecar in a
// virtual machine scraped from its host.
const vsockScheme = "vsock://"

// addressError is a --web.listen-address that cannot be listened on as written; it exits 2
// like any bad setting.
type addressError struct{ error }

func (e addressError) Unwrap() error { return e.error }

// listenWeb opens the web server's listeners: the sockets systemd passed when systemdSocket
// is set (the addresses are then unused), else one per address, TCP or vsock://[CID]:PORT.
func listenWeb(addresses []string, systemdSocket bool) ([]net.Listener, error) {
	if systemdSocket {
		ls, err := activation.Listeners()
		if err != nil {
			return nil, fmt.Errorf("--web.systemd-socket: %w", err)
		}
		var out []net.Listener
		for _, l := range ls {
			if l != nil { // a passed socket that is not a stream listener
				out = append(out, l)
			}
		}
		if len(out) == 0 {
			return nil, addressError{errors.New("--web.systemd-socket: systemd passed no listening socket (is the service started by its .socket unit?)")}
		}
		return out, nil
	}
	var out []net.Listener
	for _, addr := range addresses {
		l, err := listenOne(addr)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("--web.listen-address: %w", err)
		}
		out = append(out, l)
	}
	return out, nil
}

func listenOne(addr string) (net.Listener, error) {
	if !strings.HasPrefix(addr, vsockScheme) {
		return net.Listen("tcp", addr)
	}
	cid, port, err := parseVsock(addr)
	if err != nil {
		return nil, addressError{fmt.Errorf("%s: %w", addr, err)}
	}
	var l *vsock.Listener
	if cid == nil {
		l, err = vsock.Listen(port, nil)
	} else {
		l, err = vsock.ListenContextID(*cid, port, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return l, nil
}

// parseVsock reads vsock://[CID]:PORT; no CID listens on every context ID of the machine.
func parseVsock(addr string) (cid *uint32, port uint32, err error) {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
		return nil, 0, errors.New("a vsock address is vsock://[CID]:PORT")
	}
	host, p, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, 0, errors.New("a vsock address is vsock://[CID]:PORT")
	}
	n, err := strconv.ParseUint(p, 10, 32)
	if err != nil {
		return nil, 0, fmt.Errorf("vsock port %q is not a number of at most 32 bits", p)
	}
	if host != "" {
		c, err := strconv.ParseUint(host, 10, 32)
		if err != nil {
			return nil, 0, fmt.Errorf("vsock context ID %q is not a number of at most 32 bits", host)
		}
		c32 := uint32(c)
		cid = &c32
	}
	return cid, uint32(n), nil
}
