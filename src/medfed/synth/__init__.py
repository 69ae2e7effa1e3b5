"""medfed.synth: differentially private synthetic health data (MST, AIM), evaluated before release."""
