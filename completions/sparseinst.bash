_sparseinst_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _SPARSEINST_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _sparseinst_completion sparseinst