"""The Streamlit page's parts: the sidebar, the Live, History and Compare tabs and what they share."""
