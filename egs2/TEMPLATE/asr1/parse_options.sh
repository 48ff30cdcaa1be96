# shellcheck shell=bash
# Option parsing of the recipe scripts (sourced). The caller first defines each option as a
# lower-case shell variable holding its default, and help_message. Then "--name value" or
# "--name=value" sets the variable (dashes in a name may be written as underscores or
# dashes). --help prints help_message and exits 0; an unknown option, a missing value or
# a positional argument prints the message and exits with status 2, as does usage_error.

# shellcheck disable=SC2154  # help_message is the caller's
usage_error() {
    echo "$0: $*" >&2
    echo "${help_message}" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            echo "${help_message}"
            exit 0
            ;;
        --*=*)
            _opt_name=${1%%=*}
            set -- "${_opt_name}" "${1#*=}" "${@:2}"
            ;;
        --*)
            _opt_name=${1#--}
            _opt_name=${_opt_name//-/_}
            if ! [[ "${_opt_name}" =~ ^[a-z][a-z0-9_]*$ ]] || [ "${_opt_name}" = help_message ] \
                    || ! declare -p "${_opt_name}" > /dev/null 2>&1; then
                usage_error "unknown option $1"
            fi
            [ $# -ge 2 ] || usage_error "option $1 needs a value"
            printf -v "${_opt_name}" '%s' "$2"
            shift 2
            ;;
        *)
            usage_error "unexpected argument '$1'"
            ;;
    esac
done
unset _opt_name
