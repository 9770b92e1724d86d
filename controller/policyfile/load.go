package policyfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
)

// Policy is the objects of a policy directory.
type Policy struct {
	Zones               []v1alpha1.Zone
	ZonePolicies        []v1alpha1.ZonePolicy
	ServiceDependencies []v1alpha1.ServiceDependency
	Namespaces          []policy.Namespace
	// Workloads label endpoints whose runtime passes no labels (standalone).
	Workloads []Workload

	docs map[string]Doc // "Kind ns/name" -> where it was loaded from
}

// Doc locates a document: its file, its 1-based index among the file's
// non-empty documents, and the object it holds.
type Doc struct {
	File  string
	Index int
	// Object is "Kind name" or "Kind namespace/name", when known.
	Object string
}

func (d Doc) String() string {
	if d.Object == "" {
		return fmt.Sprintf("%s: document %d", d.File, d.Index)
	}
	return fmt.Sprintf("%s: document %d (%s)", d.File, d.Index, d.Object)
}

// Error is a problem in one document.
type Error struct {
	Doc   Doc
	Field string // field path, e.g. spec.rules[1].ports[0].endPort
	Err   error
}

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Doc.String() + ": " + e.Err.Error()
	}
	return e.Doc.String() + ": " + e.Field + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Load reads every .yaml and .yml file under dir, in lexical order. The
// error joins every problem found; the Policy holds the objects that
// passed, and is never nil.
func Load(dir string) (*Policy, error) {
	p := &Policy{}
	var errs []error
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		ext := filepath.Ext(path)
		if strings.HasPrefix(d.Name(), ".") || ext != ".yaml" && ext != ".yml" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read policy file: %w", err)
		}
		if err := p.Add(path, data); err != nil {
			errs = append(errs, err)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("load policy directory %s: %w", dir, err))
	}
	return p, errors.Join(errs...)
}

var separator = regexp.MustCompile(`^---\s*(#.*)?$`)

// splitDocuments splits a YAML stream at "---" lines and drops documents
// holding only blanks and comments.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if hasContent(cur.Bytes()) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), len(data)+1)
	for sc.Scan() {
		if separator.Match(sc.Bytes()) {
			flush()
			continue
		}
		cur.Write(sc.Bytes())
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

func hasContent(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] != '#' {
			return true
		}
	}
	return false
}

// Add loads the documents of one file; file names it in errors.
func (p *Policy) Add(file string, data []byte) error {
	if p.docs == nil {
		p.docs = map[string]Doc{}
	}
	var errs []error
	for i, raw := range splitDocuments(data) {
		doc := Doc{File: file, Index: i + 1}
		if err := p.addDocument(doc, raw); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// namespaceDoc is the part of a v1 Namespace that netseg reads.
type namespaceDoc struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              json.RawMessage `json:"spec,omitempty"`
	Status            json.RawMessage `json:"status,omitempty"`
}

func (p *Policy) addDocument(doc Doc, raw []byte) error {
	fail := func(field string, err error) error { return &Error{Doc: doc, Field: field, Err: err} }
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return fail("", fmt.Errorf("invalid YAML: %w", err))
	}
	var obj map[string]any
	if err := json.Unmarshal(js, &obj); err != nil || obj == nil {
		return fail("", errors.New("not a YAML object (want apiVersion, kind, metadata, spec)"))
	}
	var h header
	_ = json.Unmarshal(js, &h) // best effort: for naming the object only
	doc.Object = objectName(h)
	var target any
	switch {
	case h.APIVersion == v1alpha1.GroupVersion.String() && h.Kind == "Zone":
		target = &v1alpha1.Zone{}
	case h.APIVersion == v1alpha1.GroupVersion.String() && h.Kind == "ZonePolicy":
		target = &v1alpha1.ZonePolicy{}
	case h.APIVersion == v1alpha1.GroupVersion.String() && h.Kind == "ServiceDependency":
		target = &v1alpha1.ServiceDependency{}
	case h.APIVersion == "v1" && h.Kind == "Namespace":
		target = &namespaceDoc{}
	case h.APIVersion == v1alpha1.GroupVersion.String() && h.Kind == "Workload":
		target = &Workload{}
	default:
		return fail("", fmt.Errorf("unknown kind %q of apiVersion %q (want Zone, ZonePolicy, ServiceDependency or Workload of %s, or Namespace of v1)",
			h.Kind, h.APIVersion, v1alpha1.GroupVersion))
	}
	var errs []error
	for _, f := range unknownFields(obj, target) {
		errs = append(errs, fail(f, errors.New("unknown field")))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	applyDefaults(h.Kind, obj)
	js, _ = json.Marshal(obj)
	if err := json.Unmarshal(js, target); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fail(te.Field, fmt.Errorf("must be of type %s, not %s", te.Type, te.Value))
		}
		return fail("", fmt.Errorf("decode: %w", err))
	}
	var ferrs []fieldError
	switch t := target.(type) {
	case *v1alpha1.Zone:
		ferrs = validateZone(t)
	case *v1alpha1.ZonePolicy:
		ferrs = validateZonePolicy(t)
	case *v1alpha1.ServiceDependency:
		ferrs = validateServiceDependency(t, obj)
	case *namespaceDoc:
		ferrs = validateNamespace(t)
	case *Workload:
		ferrs = validateWorkload(t)
	}
	for _, fe := range ferrs {
		errs = append(errs, fail(fe.field, errors.New(fe.msg)))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if prev, dup := p.docs[doc.Object]; dup {
		return fail("metadata.name", fmt.Errorf("%s is already defined in %s", doc.Object, prev))
	}
	p.docs[doc.Object] = doc
	switch t := target.(type) {
	case *v1alpha1.Zone:
		p.Zones = append(p.Zones, *t)
	case *v1alpha1.ZonePolicy:
		p.ZonePolicies = append(p.ZonePolicies, *t)
	case *v1alpha1.ServiceDependency:
		p.ServiceDependencies = append(p.ServiceDependencies, *t)
	case *namespaceDoc:
		p.Namespaces = append(p.Namespaces, policy.Namespace{Name: t.Name, Labels: t.Labels})
	case *Workload:
		p.Workloads = append(p.Workloads, *t)
	}
	return nil
}

func objectName(h header) string {
	if h.Kind == "" {
		return ""
	}
	if h.Metadata.Namespace != "" && (h.Kind == "ServiceDependency" || h.Kind == "Workload") {
		return h.Kind + " " + h.Metadata.Namespace + "/" + h.Metadata.Name
	}
	return h.Kind + " " + h.Metadata.Name
}
