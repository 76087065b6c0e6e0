"""LifeAlign's pieces for other training stacks: TRL (`lifealign.integrations.trl`) and Hugging Face
`datasets` (`lifealign.integrations.hf_datasets`). Imported on demand: the core package needs neither."""
