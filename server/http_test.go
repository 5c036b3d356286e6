package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestPProf(t *testing.T) {
	get := func(t *testing.T, addr, path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		name  string
		pprof bool
		// want is the status of every path, and body a text each answer
		// holds when it is 200.
		want int
		body map[string]string
	}{
		{"on", true, http.StatusOK, map[string]string{
			"/debug/pprof/":                  "goroutine",
			"/debug/pprof/goroutine?debug=1": "goroutine profile: total",
			"/debug/pprof/cmdline":           "",
		}},
		{"off", false, http.StatusNotFound, map[string]string{
			"/debug/pprof/":                  "",
			"/debug/pprof/goroutine?debug=1": "",
			"/debug/pprof/cmdline":           "",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "", func(c *Config) { c.PProf = tc.pprof })
			for path, want := range tc.body {
				code, body := get(t, e.srv.HTTPAddr(), path)
				if code != tc.want || (code == http.StatusOK && !strings.Contains(body, want)) {
					t.Errorf("GET %s = %d %.200q; want %d containing %q", path, code, body, tc.want, want)
				}
			}
			// The other endpoints are there either way.
			if code, _ := get(t, e.srv.HTTPAddr(), "/healthz"); code != http.StatusOK {
				t.Errorf("GET /healthz = %d", code)
			}
		})
	}
}
