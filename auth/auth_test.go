package auth

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	hash := HashToken("s3cret")
	tests := []struct {
		name    string
		file    string
		wantErr string // a substring of the error; "" means valid
	}{
		{"plain and hashed", `{"tokens":[{"name":"a","token":"t1","namespaces":["x"],"roles":["schedule"]},{"name":"b","sha256":"` + hash + `","namespaces":["*"],"roles":["admin","node"]}]}`, ""},
		{"empty", `{"tokens":[]}`, ""},
		{"not json", `tokens: []`, "invalid character"},
		{"unknown field", `{"tokens":[{"name":"a","token":"t","namespaces":["x"],"roles":["admin"],"role":"x"}]}`, "unknown field"},
		{"trailing data", `{"tokens":[]} {}`, "after the top-level"},
		{"no name", `{"tokens":[{"token":"t","namespaces":["x"],"roles":["admin"]}]}`, ".name must be set"},
		{"duplicate name", `{"tokens":[{"name":"a","token":"t","namespaces":["x"],"roles":["admin"]},{"name":"a","token":"u","namespaces":["x"],"roles":["admin"]}]}`, "earlier entry"},
		{"both token and hash", `{"tokens":[{"name":"a","token":"t","sha256":"` + hash + `","namespaces":["x"],"roles":["admin"]}]}`, "exactly one"},
		{"neither", `{"tokens":[{"name":"a","namespaces":["x"],"roles":["admin"]}]}`, "exactly one"},
		{"short hash", `{"tokens":[{"name":"a","sha256":"abcd","namespaces":["x"],"roles":["admin"]}]}`, "64 hex digits"},
		{"duplicate token", `{"tokens":[{"name":"a","token":"s3cret","namespaces":["x"],"roles":["admin"]},{"name":"b","sha256":"` + hash + `","namespaces":["x"],"roles":["admin"]}]}`, `same as that of "a"`},
		{"no roles", `{"tokens":[{"name":"a","token":"t","namespaces":["x"],"roles":[]}]}`, ".roles must name"},
		{"bad role", `{"tokens":[{"name":"a","token":"t","namespaces":["x"],"roles":["root"]}]}`, `unknown role "root"`},
		{"no namespaces", `{"tokens":[{"name":"a","token":"t","roles":["admin"]}]}`, ".namespaces must name"},
		{"bad namespace", `{"tokens":[{"name":"a","token":"t","namespaces":["a b"],"roles":["admin"]}]}`, ".namespaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.file))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Parse accepted it; want an error with %q", tt.wantErr)
			case tt.wantErr != "" && (!errors.Is(err, ErrInvalidFile) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Parse: %v; want ErrInvalidFile with %q", err, tt.wantErr)
			}
		})
	}
}

func TestAuthenticate(t *testing.T) {
	p, err := Parse([]byte(`{"tokens":[
		{"name":"app","token":"app-token","namespaces":["orders","billing"],"roles":["schedule","subscribe"]},
		{"name":"ops","sha256":"` + HashToken("ops-token") + `","namespaces":["*"],"roles":["admin"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		token     string
		wantName  string
		role      Role
		has       bool
		namespace string
		mayUse    bool
	}{
		{"app-token", "app", RoleSchedule, true, "orders", true},
		{"app-token", "app", RoleSubscribe, true, "billing", true},
		{"app-token", "app", RoleAdmin, false, "other", false},
		{"ops-token", "ops", RoleAdmin, true, "anything", true},
		{"ops-token", "ops", RoleSchedule | RoleNode, false, "default", true},
		{"app-token ", "", 0, false, "", false},
		{"", "", 0, false, "", false},
	}
	for _, tt := range tests {
		pr, err := p.Authenticate(tt.token)
		if tt.wantName == "" {
			if !errors.Is(err, ErrUnknownToken) {
				t.Errorf("Authenticate(%q) = %v, %v; want ErrUnknownToken", tt.token, pr, err)
			}
			continue
		}
		if err != nil || pr.Name != tt.wantName {
			t.Fatalf("Authenticate(%q) = %v, %v; want %s", tt.token, pr, err, tt.wantName)
		}
		if got := pr.Has(tt.role); got != tt.has {
			t.Errorf("%s.Has(%v) = %v, want %v", pr.Name, tt.role, got, tt.has)
		}
		if got := pr.MayUse(tt.namespace); got != tt.mayUse {
			t.Errorf("%s.MayUse(%q) = %v, want %v", pr.Name, tt.namespace, got, tt.mayUse)
		}
	}
}

func TestRoleString(t *testing.T) {
	for _, tt := range []struct {
		r    Role
		want string
	}{{0, "none"}, {RoleSchedule, "schedule"}, {RoleSubscribe | RoleNode, "subscribe+node"}} {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("%d.String() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

// FuzzParse checks that Parse never panics, and that a file it accepts
// authenticates each of its plain tokens as the entry that holds it.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"tokens":[{"name":"a","token":"t1","namespaces":["x","*"],"roles":["schedule","node"]}]}`))
	f.Add([]byte(`{"tokens":[{"name":"b","sha256":"` + HashToken("x") + `","namespaces":["y"],"roles":["admin"]}]}`))
	f.Add([]byte(`{"tokens":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidFile) {
				t.Fatalf("error %v does not wrap ErrInvalidFile", err)
			}
			return
		}
		var f file
		_ = json.Unmarshal(data, &f)
		for _, e := range f.Tokens {
			if e.Token == "" {
				continue
			}
			pr, err := p.Authenticate(e.Token)
			if err != nil || pr.Name != e.Name {
				t.Fatalf("token of %q authenticates as %v, %v", e.Name, pr, err)
			}
		}
	})
}
