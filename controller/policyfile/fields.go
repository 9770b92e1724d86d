package policyfile

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// unknownFields lists the paths of fields in obj that target's type does
// not have, as a strict decoder would reject them, but with their paths.
func unknownFields(obj map[string]any, target any) []string {
	var out []string
	walk(obj, reflect.TypeOf(target), "", &out)
	return out
}

func walk(v any, t reflect.Type, path string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshaler) || t.Kind() == reflect.Interface {
		return // decodes itself (metav1.Time, json.RawMessage, ...)
	}
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		switch t.Kind() {
		case reflect.Map:
			for _, k := range keys {
				walk(v[k], t.Elem(), join(path, k), out)
			}
		case reflect.Struct:
			fields := jsonFields(t)
			for _, k := range keys {
				ft, ok := fields[k]
				if !ok {
					*out = append(*out, join(path, k))
					continue
				}
				walk(v[k], ft, join(path, k), out)
			}
		}
	case []any:
		if t.Kind() == reflect.Slice {
			for i, e := range v {
				walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), out)
			}
		}
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// jsonFields maps the JSON names of a struct's fields to their types,
// with inline (embedded) structs flattened.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		if name == "" && f.Anonymous && f.Type.Kind() == reflect.Struct {
			for k, ft := range jsonFields(f.Type) {
				m[k] = ft
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

// applyDefaults sets the CRDs' defaults on absent fields, as the API
// server does before validation.
func applyDefaults(kind string, obj map[string]any) {
	spec, _ := obj["spec"].(map[string]any)
	if spec == nil {
		return
	}
	setDefault := func(m map[string]any, k string, v any) {
		if _, ok := m[k]; !ok {
			m[k] = v
		}
	}
	portDefaults := func(list any) {
		items, _ := list.([]any)
		for _, it := range items {
			m, _ := it.(map[string]any)
			if m == nil {
				continue
			}
			ports, _ := m["ports"].([]any)
			for _, p := range ports {
				if pm, _ := p.(map[string]any); pm != nil {
					setDefault(pm, "protocol", "TCP")
				}
			}
		}
	}
	switch kind {
	case "Zone":
		setDefault(spec, "priority", 100)
		setDefault(spec, "mode", "Enforce")
	case "ZonePolicy":
		setDefault(spec, "priority", 100)
		setDefault(spec, "mode", "Enforce")
		portDefaults(spec["rules"])
	case "ServiceDependency":
		portDefaults(spec["dependsOn"])
	}
}
