package server

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpHandler serves /metrics, /healthz (the process is up and not
// shutting down) and /readyz (every shard is loaded and served).
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.quitting() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		loaded, total := s.loaded.Load(), len(s.slots)
		if !s.Ready() {
			http.Error(w, fmt.Sprintf("not ready: %d of %d shards loaded", loaded, total), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready: %d of %d shards loaded\n", loaded, total)
	})
	return mux
}
