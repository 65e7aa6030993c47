package cuda

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLaunchNamesIndexed reads the backend's own Go source: every kernel
// name a launch call spells out is a kernel of the embedded sources, and
// every name it builds from a literal prefix ("fill"+suffix(d)) names at
// least one. A launch of a name the index lacks fails only when it runs, on
// a GPU; this finds a misspelt or vanished kernel on any machine.
func TestLaunchNamesIndexed(t *testing.T) {
	kf, _, err := kernelIndex()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "launch" {
				return true
			}
			lit, whole := literalPrefix(call.Args[0])
			if lit == "" {
				return true // a name computed elsewhere (rowKernel, attention's dispatch)
			}
			checked++
			pos := fset.Position(call.Pos())
			if whole {
				if _, ok := kf[lit]; !ok {
					t.Errorf("%s: launch of %q, which no kernel file defines", pos, lit)
				}
				return true
			}
			for name := range kf {
				if strings.HasPrefix(name, lit) {
					return true
				}
			}
			t.Errorf("%s: launch of %q+…, which begins no kernel's name", pos, lit)
			return true
		})
	}
	if checked < 60 {
		t.Errorf("checked only %d launch names: the source's launch calls were not found", checked)
	}
}

// literalPrefix returns the string literal a launch's name is or begins
// with, and whether it is the whole name.
func literalPrefix(e ast.Expr) (string, bool) {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind == token.STRING {
			s, err := strconv.Unquote(v.Value)
			if err == nil {
				return s, true
			}
		}
	case *ast.BinaryExpr:
		if v.Op == token.ADD {
			s, _ := literalPrefix(v.X)
			return s, false
		}
	}
	return "", false
}
