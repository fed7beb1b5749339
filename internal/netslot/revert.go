package netslot

// reverter collects undo steps of a multi-step host change. If the change
// fails half way, Fail runs the steps done so far in reverse order; once the
// change is complete, Success forgets them.
type reverter struct {
	undo []func()
}

// Add records the undo step of a step that has just succeeded.
func (r *reverter) Add(f func()) { r.undo = append(r.undo, f) }

// Fail undoes the recorded steps, newest first.
func (r *reverter) Fail() {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
	r.undo = nil
}

// Success keeps the change: nothing will be undone.
func (r *reverter) Success() { r.undo = nil }
