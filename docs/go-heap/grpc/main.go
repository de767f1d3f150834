// How much a Go gRPC service keeps live, and what a collection costs it: a server whose
// handler calls a downstream gRPC server over one client connection (as hotel-reservation's
// search calls geo and rate), under a steady load. Run by ../run.sh; not part of the build.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	hpb "google.golang.org/grpc/health/grpc_health_v1"
)

// chain answers a health check by asking the downstream server.
type chain struct {
	hpb.UnimplementedHealthServer
	down hpb.HealthClient
}

func (c *chain) Check(ctx context.Context, r *hpb.HealthCheckRequest) (*hpb.HealthCheckResponse, error) {
	return c.down.Check(ctx, r)
}

func main() {
	mode := flag.String("mode", "server", "down | server | load")
	addr := flag.String("addr", "127.0.0.1:50051", "listen (down, server) or target (load)")
	downAddr := flag.String("down", "127.0.0.1:50052", "server: the downstream server")
	rps := flag.Int("rps", 1000, "load: requests a second")
	secs := flag.Int("secs", 20, "seconds to run")
	flag.Parse()
	switch *mode {
	case "down":
		lis, err := net.Listen("tcp", *addr)
		if err != nil {
			panic(err)
		}
		s := grpc.NewServer()
		hpb.RegisterHealthServer(s, health.NewServer())
		s.Serve(lis)
	case "server":
		conn, err := grpc.Dial(*downAddr, grpc.WithInsecure())
		if err != nil {
			panic(err)
		}
		lis, err := net.Listen("tcp", *addr)
		if err != nil {
			panic(err)
		}
		s := grpc.NewServer()
		hpb.RegisterHealthServer(s, &chain{down: hpb.NewHealthClient(conn)})
		go s.Serve(lis)
		time.Sleep(time.Duration(*secs) * time.Second)
		// Under load still: what a forced collection leaves is the live heap.
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		fmt.Printf("grpc: live heap %.2f MB, stacks %.2f MB, heap goal %.2f MB, %d collections in %d s\n",
			float64(ms.HeapAlloc)/(1<<20), float64(ms.StackInuse)/(1<<20),
			float64(ms.NextGC)/(1<<20), ms.NumGC, *secs)
		os.Exit(0)
	case "load":
		conn, err := grpc.Dial(*addr, grpc.WithInsecure())
		if err != nil {
			panic(err)
		}
		c := hpb.NewHealthClient(conn)
		tick := time.NewTicker(time.Second / time.Duration(*rps))
		end := time.Now().Add(time.Duration(*secs) * time.Second)
		var wg sync.WaitGroup
		for time.Now().Before(end) {
			<-tick.C
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Check(context.Background(), &hpb.HealthCheckRequest{})
			}()
		}
		wg.Wait()
	}
}
