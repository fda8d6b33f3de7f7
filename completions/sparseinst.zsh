#compdef sparseinst

_sparseinst_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _SPARSEINST_COMPLETE=complete_zsh sparseinst)
}

compdef _sparseinst_completion sparseinst