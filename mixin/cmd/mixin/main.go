// Command mixin writes pgsidecar's rule file and dashboards from package mixin; `make mixin`
// runs it from the repository root.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgsidecar/pgsidecar/mixin"
)

func main() {
	root := flag.String("root", ".", "repository root to write alerts/ and dashboards/ under")
	flag.Parse()
	files, err := mixin.Default.Files()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mixin:", err)
		os.Exit(1)
	}
	for name, data := range files {
		p := filepath.Join(*root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "mixin:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "mixin:", err)
			os.Exit(1)
		}
	}
}
