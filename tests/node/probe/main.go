// Command probe is the one binary inside the node tests' pods: a small HTTP backend and the
// client-side checks a test needs from inside a pod's network namespace. Static, no shell, so an
// image is this file alone. Every check prints one line and exits 0 on success, 1 on failure:
//
//	probe serve ADDR          HTTP server answering "pod=<hostname> path=<path>" until SIGTERM
//	probe lookup NAME         resolve NAME with the pod's /etc/resolv.conf; print the addresses
//	probe dial HOST:PORT      open a TCP connection (5 s timeout); print the error if it fails
//	probe get URL             HTTP GET (5 s timeout); print the status line and the body
//	probe sleep               do nothing until SIGTERM/SIGINT
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const timeout = 5 * time.Second

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe serve ADDR | lookup NAME | dial HOST:PORT | get URL | sleep")
	}
	arg := func() string {
		if len(os.Args) != 3 {
			fail(fmt.Sprintf("probe %s takes exactly one argument", os.Args[1]))
		}
		return os.Args[2]
	}
	switch os.Args[1] {
	case "serve":
		serve(arg())
	case "lookup":
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, arg())
		if err != nil {
			fail("lookup failed: " + err.Error())
		}
		fmt.Println("resolved:", addrs)
	case "dial":
		conn, err := net.DialTimeout("tcp", arg(), timeout)
		if err != nil {
			fail("dial failed: " + err.Error())
		}
		conn.Close()
		fmt.Println("connected:", os.Args[2])
	case "get":
		client := http.Client{Timeout: timeout}
		resp, err := client.Get(arg())
		if err != nil {
			fail("get failed: " + err.Error())
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if err != nil {
			fail("reading the body failed: " + err.Error())
		}
		fmt.Printf("status=%d body=%s\n", resp.StatusCode, body)
		if resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
	case "sleep":
		waitForStop()
	default:
		fail("unknown command " + os.Args[1])
	}
}

func serve(addr string) {
	host, _ := os.Hostname()
	server := &http.Server{Addr: addr, ReadHeaderTimeout: timeout, Handler: http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "pod=%s path=%s\n", host, r.URL.Path)
		})}
	go func() {
		waitForStop()
		server.Close()
	}()
	fmt.Println("serving on", addr)
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fail("serve failed: " + err.Error())
	}
}

// As PID 1 a process gets no default signal handling: catch the stop signals explicitly.
func waitForStop() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}

func fail(message string) {
	fmt.Println(message)
	os.Exit(1)
}
