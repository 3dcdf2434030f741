// Command pause is the pod sandbox's entrypoint on the test node: it holds the pod's namespaces
// open by doing nothing until containerd stops it. As PID 1 a process gets no default signal
// handling, so it must catch SIGTERM/SIGINT itself or it would only ever die by SIGKILL.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
