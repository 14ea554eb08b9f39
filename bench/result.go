package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// File is one invocation of the harness: the machine, the commit, and a
// Result per scenario. It is what the JSON results file holds.
type File struct {
	Started    time.Time  `json:"started"`
	Commit     string     `json:"commit,omitempty"`
	Cores      int        `json:"cores"`
	GoVersion  string     `json:"go_version"`
	Smoke      bool       `json:"smoke,omitempty"`
	LoadBefore [3]float64 `json:"load_before"` // /proc/loadavg: 1, 5, 15 minutes
	LoadAfter  [3]float64 `json:"load_after"`
	Results    []Result   `json:"results"`
}

// Result is one scenario's runs.
type Result struct {
	Scenario    string            `json:"scenario"`
	Description string            `json:"description,omitempty"`
	Bytes       int64             `json:"bytes"`
	Sides       []string          `json:"sides,omitempty"`
	Notes       map[string]string `json:"notes,omitempty"`
	Reps        int               `json:"reps"`
	Tools       []string          `json:"tools"` // in the order the scenario lists them
	Runs        []Sample          `json:"runs"`  // in the order they ran
	SpeedUp     *SpeedUp          `json:"speedup,omitempty"`
	Ratio       *Ratio            `json:"ratio,omitempty"`
	LoadBefore  [3]float64        `json:"load_before"`
	LoadAfter   [3]float64        `json:"load_after"`
}

// Sample is one run of one tool.
type Sample struct {
	Tool string `json:"tool"`
	Rep  int    `json:"rep"`
	Measure
}

// WriteJSON writes f to path, indented.
func WriteJSON(path string, f *File) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing results: %w", err)
	}
	return nil
}

// ReadJSON reads a file written by WriteJSON.
func ReadJSON(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading results: %w", err)
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("decoding results %s: %w", path, err)
	}
	return &f, nil
}
