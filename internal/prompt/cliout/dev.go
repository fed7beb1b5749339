package cliout

// dev parses `hangar-devcli prompt --json`, hangar's own dev CLI: its lines
// are the common events already, so this is a plain mapping.
type dev struct{}

type devLine struct {
	Text         str  `json:"text"`
	Name         str  `json:"name"`
	ID           str  `json:"id"`
	Phase        str  `json:"phase"`
	Input        str  `json:"input"`
	Output       str  `json:"output"`
	Status       str  `json:"status"`
	InputTokens  num  `json:"input_tokens"`
	OutputTokens num  `json:"output_tokens"`
	CachedTokens num  `json:"cached_tokens"`
	CostUSD      fnum `json:"cost_usd"`
	IsError      bool `json:"is_error"`
	Message      str  `json:"message"`
}

func (dev) handle(typ string, raw []byte) []Event {
	var l devLine
	if !decode(raw, &l) {
		return nil
	}
	switch typ {
	case "text":
		if l.Text == "" {
			return nil
		}
		return []Event{output(string(l.Text))}
	case "tool":
		phase := string(l.Phase)
		if phase != PhaseResult {
			phase = PhaseCall
		}
		return []Event{toolEvent(Tool{Name: string(l.Name), ID: string(l.ID), Phase: phase, Input: string(l.Input), Output: string(l.Output), Status: string(l.Status)})}
	case "usage":
		return usageEvent(Usage{InputTokens: int64(l.InputTokens), OutputTokens: int64(l.OutputTokens), CachedTokens: int64(l.CachedTokens), CostUSD: float64(l.CostUSD)})
	case "result":
		if l.IsError {
			msg := string(l.Message)
			if msg == "" {
				msg = "dev CLI reported an error"
			}
			return []Event{{Type: TypeResult, IsError: true, Message: message(msg)}}
		}
		return []Event{{Type: TypeResult, Text: clean(string(l.Text))}}
	}
	// start: nothing to show.
	return nil
}
