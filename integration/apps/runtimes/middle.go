// The Go middle tier of the runtime tests: net/http's server, and the default
// http.Client (keep-alive connections, written by their own goroutines) to the
// backend. GET /m/<rest> calls GET <backend>/b/<rest> and answers its body.
//
//	go run middle.go -listen HOST:PORT -backend http://HOST:PORT
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	listen := flag.String("listen", "", "address to serve on")
	backend := flag.String("backend", "", "backend base URL")
	flag.Parse()
	http.DefaultTransport.(*http.Transport).MaxIdleConnsPerHost = 64
	http.HandleFunc("/m/", func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get(*backend + "/b/" + strings.TrimPrefix(r.URL.Path, "/m/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		w.Write(body)
	})
	fmt.Println("READY")
	if err := http.ListenAndServe(*listen, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
