"""homelab-ai's audio server: one speech model behind OpenAI's audio API.

A server serves one model, of one type: ``stt`` (a faster-whisper / CTranslate2 Whisper
model: ``/v1/audio/transcriptions`` and ``/v1/audio/translations``) or ``tts`` (a Piper
voice: ``/v1/audio/speech`` and ``/v1/audio/voices``). The manager launches it
(``python -m audioserver``) with ``HOMELAB_AUDIO_*`` variables (`audioserver.settings`).
"""
