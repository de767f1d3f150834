// How much a Go net/http server keeps live per keep-alive client connection (as
// hotel-reservation's frontend keeps one per Locust user): clients each send a request, read
// the answer and think an exponential 1 s, on their own connection. Run by ../run.sh; not
// part of the build.
package main

import (
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"math/rand"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"
)

func main() {
	mode := flag.String("mode", "server", "server | load")
	addr := flag.String("addr", "127.0.0.1:5000", "listen (server) or target (load)")
	users := flag.Int("users", 1000, "load: clients")
	secs := flag.Int("secs", 20, "seconds to run")
	flag.Parse()
	if *mode == "server" {
		http.HandleFunc("/hotels", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"type":"FeatureCollection","features":[{"id":"1","properties":{"name":"a"}}]}`)
		})
		lis, err := net.Listen("tcp", *addr)
		if err != nil {
			panic(err)
		}
		go http.Serve(lis, nil)
		time.Sleep(time.Duration(*secs) * time.Second)
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		fmt.Printf("http: live heap %.2f MB, stacks %.2f MB, %d goroutines\n",
			float64(ms.HeapAlloc)/(1<<20), float64(ms.StackInuse)/(1<<20), runtime.NumGoroutine())
		os.Exit(0)
	}
	for u := 0; u < *users; u++ {
		go func() {
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for {
				if resp, err := c.Get("http://" + *addr + "/hotels"); err == nil {
					ioutil.ReadAll(resp.Body)
					resp.Body.Close()
				}
				time.Sleep(time.Duration(rand.ExpFloat64() * float64(time.Second)))
			}
		}()
	}
	time.Sleep(time.Duration(*secs) * time.Second)
}
