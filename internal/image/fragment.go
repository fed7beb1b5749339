package image

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// ConfigOption is one Kconfig assignment: Value is the right-hand side as it
// appears in a .config ("y", "m", "\"-hangar\"", "64"), or "n" for a
// "# CONFIG_FOO is not set" line.
type ConfigOption struct {
	Name  string // with the CONFIG_ prefix
	Value string
	Line  int // 1-based line in the source file; 0 when not from a file
}

var (
	setRe   = regexp.MustCompile(`^(CONFIG_[A-Za-z0-9_]+)=(.*)$`)
	unsetRe = regexp.MustCompile(`^# (CONFIG_[A-Za-z0-9_]+) is not set$`)
)

// ParseConfig reads a Kconfig fragment or a full .config. Other comments and
// blank lines are ignored; anything else is an error, so a typo in the
// fragment ("CONFIG_FOO y") cannot silently become a no-op. An option given
// twice is an error too: the second would silently win in merge_config.
func ParseConfig(r io.Reader) ([]ConfigOption, error) {
	var opts []ConfigOption
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		var o ConfigOption
		if m := setRe.FindStringSubmatch(line); m != nil {
			o = ConfigOption{Name: m[1], Value: m[2], Line: n}
		} else if m := unsetRe.FindStringSubmatch(line); m != nil {
			o = ConfigOption{Name: m[1], Value: "n", Line: n}
		} else if line == "" || strings.HasPrefix(line, "#") {
			continue
		} else {
			return nil, fmt.Errorf("line %d: not a Kconfig assignment: %q", n, line)
		}
		if prev, dup := seen[o.Name]; dup {
			return nil, fmt.Errorf("line %d: %s already set on line %d", n, o.Name, prev)
		}
		seen[o.Name] = n
		opts = append(opts, o)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return opts, nil
}

// ConfigMismatch is a fragment option whose value did not survive into the
// final .config.
type ConfigMismatch struct {
	Option ConfigOption // as the fragment asked
	Got    string       // value in the final .config ("n" when absent or unset)
}

func (m ConfigMismatch) String() string {
	return fmt.Sprintf("%s=%s (fragment line %d) ended up as %s", m.Option.Name, m.Option.Value, m.Option.Line, m.Got)
}

// VerifyConfig checks every fragment option against the final .config and
// returns the ones Kconfig changed, in fragment order. An option absent from
// the .config counts as "n" (that is how Kconfig writes symbols whose
// dependencies are unmet: not at all).
func VerifyConfig(fragment, final []ConfigOption) []ConfigMismatch {
	got := make(map[string]string, len(final))
	for _, o := range final {
		got[o.Name] = o.Value
	}
	var bad []ConfigMismatch
	for _, want := range fragment {
		v, ok := got[want.Name]
		if !ok {
			v = "n"
		}
		if v != want.Value {
			bad = append(bad, ConfigMismatch{Option: want, Got: v})
		}
	}
	return bad
}

// ConfigMismatchError is returned when a kernel build lost fragment options.
type ConfigMismatchError struct {
	Mismatches []ConfigMismatch
}

func (e *ConfigMismatchError) Error() string {
	names := make([]string, 0, len(e.Mismatches))
	for _, m := range e.Mismatches {
		names = append(names, m.String())
	}
	sort.Strings(names)
	return fmt.Sprintf("%d kernel config option(s) from the fragment were dropped or changed by Kconfig: %s",
		len(e.Mismatches), strings.Join(names, "; "))
}
