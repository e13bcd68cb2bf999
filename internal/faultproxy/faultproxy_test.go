package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers each line with the same line and reports what it received.
func echoServer(t *testing.T) (addr string, got <-chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	lines := make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					s, err := r.ReadString('\n')
					if err != nil {
						return
					}
					lines <- s
					if _, err := io.WriteString(c, s); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), lines
}

func TestCutReplyAfter(t *testing.T) {
	addr, got := echoServer(t)
	p, err := Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // only catches a hang
		return c, bufio.NewReader(c)
	}
	c, r := dial()
	defer c.Close()
	done := p.CutReplyAfter([]byte("MARK"))

	// Traffic without the marker passes.
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	if s, err := r.ReadString('\n'); err != nil || s != "hello\n" {
		t.Fatalf("before the marker: %q %v", s, err)
	}
	<-got

	// The marked request reaches the server; its reply does not reach the client.
	if _, err := io.WriteString(c, "MARK 1\n"); err != nil {
		t.Fatal(err)
	}
	if s, err := r.ReadString('\n'); err == nil {
		t.Fatalf("the reply %q came through", s)
	}
	if s := <-got; s != "MARK 1\n" {
		t.Fatalf("server got %q", s)
	}
	<-done

	// One shot: a new connection passes the marker and its reply.
	c2, r2 := dial()
	defer c2.Close()
	if _, err := io.WriteString(c2, "MARK 2\n"); err != nil {
		t.Fatal(err)
	}
	if s, err := r2.ReadString('\n'); err != nil || s != "MARK 2\n" {
		t.Fatalf("after the cut: %q %v", s, err)
	}
}
