// A TLS relay on Go's crypto/tls: the encrypted hop of a harness scenario whose TLS stack is
// Go's (pulsar-client-go and most Go services). Usage:
//
//	relay PEM SERVICE...
//
// where PEM holds the server's key and certificate and each SERVICE is IN>OUT, both
// tls:PORT or tcp:PORT on 127.0.0.1: it accepts on IN and, per connection, connects to OUT and
// copies what it reads on to it. Clients accept any certificate (as the harness's do).
// Each copy is one Read and one Write per chunk: io.Copy between two TCP sockets would splice,
// and spliced bytes never pass a read or write syscall.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
)

type end struct {
	tls  bool
	addr string
}

func parseEnd(s string) end {
	mode, port, ok := strings.Cut(s, ":")
	if !ok || (mode != "tls" && mode != "tcp") {
		fail("bad end %q: want tls:PORT or tcp:PORT", s)
	}
	return end{mode == "tls", "127.0.0.1:" + port}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go relay: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: relay PEM IN>OUT...")
	}
	cert, err := tls.LoadX509KeyPair(os.Args[1], os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}}
	client := &tls.Config{InsecureSkipVerify: true}
	for _, s := range os.Args[2:] {
		in, out, ok := strings.Cut(s, ">")
		if !ok {
			fail("bad service %q: want IN>OUT", s)
		}
		from, to := parseEnd(in), parseEnd(out)
		l, err := net.Listen("tcp4", from.addr)
		if err != nil {
			fail("%v", err)
		}
		if from.tls {
			l = tls.NewListener(l, server)
		}
		go serve(l, to, client)
	}
	select {}
}

func serve(l net.Listener, to end, client *tls.Config) {
	for {
		in, err := l.Accept()
		if err != nil {
			fail("%v", err)
		}
		var out net.Conn
		if to.tls {
			out, err = tls.Dial("tcp4", to.addr, client)
		} else {
			out, err = net.Dial("tcp4", to.addr)
		}
		if err != nil {
			fail("%v", err)
		}
		go copyChunks(in, out)
	}
}

func copyChunks(in, out net.Conn) {
	defer in.Close()
	defer out.Close()
	buf := make([]byte, 16*1024)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	// Say goodbye (close_notify on TLS, then FIN) and read until the peer closes: closing
	// with unread bytes (TLS 1.3 session tickets) would reset the connection under the peer's
	// last reads.
	if c, ok := out.(interface{ CloseWrite() error }); ok {
		c.CloseWrite()
	}
	for {
		if _, err := out.Read(buf); err != nil {
			return
		}
	}
}
